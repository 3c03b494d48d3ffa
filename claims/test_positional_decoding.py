"""Where position lives (§3.2, Figure 2, Figure 11): linear probes read each image token's grid row and
column from its hidden state, stage by stage: vision backbone layers, the projector output, LM layers.

Accuracy is the mean of the two axes' held-out accuracy (joint accuracy for per-position maps);
intervals bootstrap over held-out *images* (the tokens of one image are not independent).
"""

import numpy as np
import pytest

from mechanisms.experiments.probing import corner_mask
from mechanisms.models import sites


def _study(vlm, probes, claim):
    """The probe study with Figure 2's table recorded."""
    order = {s: i for i, s in enumerate(probes.results)}
    rows = [{"order": order[s], "mode": s, "kind": sites.stage_of(s), "value": round(100 * r.accuracy, 2),
             "row_accuracy": round(100 * r.row_accuracy, 2), "col_accuracy": round(100 * r.col_accuracy, 2)}
            for s, r in probes.results.items()]
    claim.table("figure2", rows, title="Figure 2: positional decoding accuracy (%) per stage (mean of row/col)",
                figure={"kind": "lines", "x": "mode", "y": "value", "series": "kind", "mark_max": ["llm"],
                        "xlabel": "stage (vision layers, projector, LM layers)", "ylabel": "accuracy (%)"})
    return probes, vlm.profile.claims["probing"]


def _heatmap(claim, name, title, result):
    cells = [{"order": r * 1000 + c, "row": r, "col": c, "value": round(float(v), 4)}
             for (r, c), v in np.ndenumerate(result.per_position)]
    claim.table(name, cells, title=title, figure={"kind": "heatmap", "x": "col", "y": "row", "value": "value"})


def test_position_is_decodable_early_in_the_backbone_and_fades_with_depth(vlm, dataset, claim, probes):
    """Positional information in the visual backbone is decodable from early layers but largely vanishes
    by the final layers.

    Paper: §3.2, Figure 2 (left, backbone layers)
    """
    study, settings = _study(vlm, probes, claim)
    vision = study.stages(sites.VISION)
    early = vision[: max(1, len(vision) // 3)]
    best = max(early, key=lambda s: study.results[s].accuracy)
    last = vision[-1]
    for stage in vision:
        claim.measure(f"accuracy_{stage}", study.results[stage].per_image())
    claim.note("best early backbone stage", best)
    early_m = claim.measure(f"early_backbone_best_{best}", study.results[best].per_image())
    decay = claim.difference(f"decay_{best}_minus_{last}", study.results[best].per_image(),
                             study.results[last].per_image())
    claim.expect_at_least(early_m, settings["min_early_backbone_accuracy"], "early backbone layers encode position")
    claim.expect_at_least(decay, settings["min_backbone_decay"], "positional decodability fades with backbone depth")


def test_the_projector_keeps_the_corners(vlm, dataset, claim, probes):
    """The multimodal projection retains strong signals for the four image corners: corner tokens are
    decoded well above chance and better than the interior.

    Paper: §3.2, Figure 11 (projection)
    """
    study, settings = _study(vlm, probes, claim)
    result = study.results[sites.PROJECTOR]
    rows, cols = study.grid(sites.PROJECTOR)
    corners = corner_mask(rows, cols)[result.test_rows, result.test_cols]
    chance = 1.0 / (rows * cols)
    claim.measure("projector_accuracy", result.per_image())
    corner = claim.measure("projector_corner_joint_accuracy", result.per_image(corners, joint=True))
    claim.measure("projector_interior_joint_accuracy", result.per_image(~corners, joint=True))
    advantage = claim.difference("corner_minus_interior_joint_accuracy", result.per_image(corners, joint=True),
                                 result.per_image(~corners, joint=True))
    claim.note("chance (joint)", f"{chance:.4f}")
    claim.expect_at_least(corner, settings["min_corner_over_chance"] * chance, "corners are decoded well above chance")
    claim.expect_at_least(advantage, settings["min_corner_advantage"], "corners are decoded better than the interior")
    _heatmap(claim, "figure11_projector", "Figure 11: joint position accuracy per token at the projector", result)
    control = claim.measure("shuffled_label_control_accuracy", study.control.per_image())
    claim.expect_at_most(control, 1.0 / min(rows, cols) + settings["max_control_over_chance"],
                         "a probe trained on shuffled labels stays at chance (the probe cannot memorize)")


def test_the_language_model_rebuilds_position_to_a_peak(vlm, dataset, claim, probes):
    """Within the LM, positional identifiability starts low, rises to a peak layer, and the peak exceeds the
    projector's level; tokens at row boundaries ("line breaks") are decoded better than other tokens there.

    Paper: §3.2, Figure 2 (LM layers; peak at layer 12 for LLaVA-7B, 13 for LLaVA-13B, 7 for InternVL-8B)
    """
    study, settings = _study(vlm, probes, claim)
    llm = study.stages(sites.LLM)
    peak = max(llm, key=lambda s: study.results[s].accuracy)
    paper_peak = vlm.profile.paper_value("probing", "peak_llm_layer")
    claim.note("peak LM layer", f"{sites.layer_of(peak)} of {len(llm)}"
               + (f" (paper: {paper_peak})" if paper_peak is not None else ""))
    _note_positions(vlm, claim)
    for stage in llm:
        claim.measure(f"accuracy_{stage}", study.results[stage].per_image())
    gain = claim.difference(f"{peak}_minus_projector", study.results[peak].per_image(),
                            study.results[sites.PROJECTOR].per_image())
    claim.expect_at_least(gain, settings["min_llm_gain_over_projector"], "the LM's peak exceeds the projector")
    result = study.results[peak]
    _, cols = study.grid(peak)
    line_break = (result.test_cols == 0) | (result.test_cols == cols - 1)
    advantage = claim.difference("line_break_minus_other_tokens", result.per_image(line_break),
                                 result.per_image(~line_break))
    claim.expect_at_least(advantage, settings["min_line_break_advantage"],
                          "row-boundary tokens are decoded better than the others at the peak layer")
    _heatmap(claim, "figure11_peak", f"Figure 11: joint position accuracy per token at the peak LM layer ({peak})",
             result)


def test_position_peaks_at_the_layer_the_paper_finds(vlm, dataset, claim, probes):
    """Positional identifiability in the LM peaks around layer 12 for LLaVA-7B, layer 13 for LLaVA-13B and
    layer 7 for InternVL3.5-8B.

    The peak LM layer (argmax of mean accuracy), bootstrapped over held-out images, lies within the
    profile's tolerance of the paper's peak for this model; profiles the paper did not measure skip.
    Paper: §3.2, Figure 2 (the appendix's Figure 11 caption gives 13 / 12 for 7B / 13B)
    """
    paper_peak = vlm.profile.paper_value("probing", "peak_llm_layer")
    if paper_peak is None:
        pytest.skip(f"the paper reports no probe peak for {vlm.profile.name} "
                    "(only for LLaVA-1.5 7B/13B and InternVL-3.5 8B)")
    study, _ = _study(vlm, probes, claim)
    llm = study.stages(sites.LLM)
    position_peaks_at_the_layer_the_paper_finds(claim, vlm.profile, [sites.layer_of(s) for s in llm],
                                                np.stack([study.results[s].per_image() for s in llm], axis=1),
                                                study.results[sites.PROJECTOR].per_image())


def position_peaks_at_the_layer_the_paper_finds(claim, profile, layers, per_image_accuracy, projector_accuracy):
    """`per_image_accuracy`: [images, LM layers] held-out accuracy, columns in `layers` order; the peak is
    only located where it rises above the projector (an argmax over a flat curve lands anywhere)."""
    paper_peak = profile.paper_value("probing", "peak_llm_layer")
    tolerance = profile.claims["locations"]["layer_tolerance"]
    layers = np.asarray(layers)
    peak_column = int(np.argmax(per_image_accuracy.mean(0)))
    gain = claim.difference("peak_minus_projector_accuracy", per_image_accuracy[:, peak_column], projector_accuracy)
    claim.expect_at_least(gain, profile.claims["probing"]["min_llm_gain_over_projector"],
                          "the LM rebuilds position to a peak (there is a peak to locate)")
    peak = claim.statistic("peak_llm_layer", lambda acc: float(layers[int(np.argmax(acc.mean(0)))]),
                           [per_image_accuracy], paper=paper_peak, unit="layer",
                           description="argmax over LM layers of the mean held-out accuracy")
    claim.expect_at_least(peak, paper_peak - tolerance, f"the peak is no earlier than layer {paper_peak - tolerance}")
    claim.expect_at_most(peak, paper_peak + tolerance, f"the peak is no later than layer {paper_peak + tolerance}")


def _note_positions(vlm, claim) -> None:
    """Where the LM is told image positions other than by their order (M-RoPE), say so next to the result."""
    if vlm.adapter.image_positions_note:
        claim.note("how the LM is told image positions", vlm.adapter.image_positions_note)
