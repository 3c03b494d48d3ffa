"""The models under test: profiles and checkpoints (`registry`), one adapter per family (`adapters`),
the model-side vocabulary of sites (`sites`), and the mean visual embedding ablation writes (`mean_embedding`)."""
