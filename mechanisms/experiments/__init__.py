"""The paper's experiments as measurements: token effects, attribution, probing, knockout, mediation and
head ablation sweeps (plus slow references that the tests check the fast sweeps against)."""
