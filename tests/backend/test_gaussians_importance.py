"""Importance scores (section 2): outdoor = weight per touched pixel in dominating views, indoor = weight."""
import pytest
import torch

from milo_backend.events import NullReporter
from milo_backend.gaussians.importance import gather_weight_stats, importance_scores
from milo_backend.render import RenderOutput
from test_gaussians_toy_renderer import make_camera, splats_of, toy_render

# per view, per Gaussian: (weight_sum, pixels_touched, pixels_dominated)
VIEWS = [
    # G0: dominates in view 0 only   G1: never dominates   G2: seen in one view   G3: dominates in both
    [(2.0, 4, 1), (1.0, 1, 0), (3.0, 3, 2), (1.0, 2, 1)],
    [(4.0, 8, 0), (1.0, 1, 0), (0.0, 0, 0), (3.0, 3, 1)],
]


def fake_render(cam):
    w, touched, dominated = (torch.tensor(col) for col in zip(*VIEWS[int(cam.name)]))
    z = torch.zeros(1, 1, 1)
    return RenderOutput(color=z, alpha=z, depth_median=z, depth_expected=z, normals=z,
                        means2d=torch.zeros(4, 2), radii=(touched > 0).long(), weight_sum=w.float(),
                        pixels_touched=touched, pixels_dominated=dominated)


CAMS = [make_camera((0, 0, 5), name="0"), make_camera((0, 0, 5), name="1")]


def test_outdoor_scores_weight_per_pixel_in_dominating_views_only():
    scores, seen = importance_scores(fake_render, CAMS, 4, scene="outdoor")
    # G0: 2/4 (view 1 ignored: it dominates nothing there); G3: 1/2 + 3/3
    assert scores.tolist() == pytest.approx([0.5, 0.0, 0.0, 1.5])
    assert seen.tolist() == [2, 2, 1, 2]


def test_indoor_scores_total_weight_in_every_view():
    scores, _ = importance_scores(fake_render, CAMS, 4, scene="indoor")
    # G0: 2 + 4 (also the view where it dominates nothing); G1 never dominates; G2 seen once
    assert scores.tolist() == pytest.approx([6.0, 0.0, 0.0, 4.0])


def test_stats_and_argument_checks():
    reporter = NullReporter()
    stats = gather_weight_stats(fake_render, CAMS, 4, reporter=reporter)
    assert stats.weight_sum.tolist() == [6, 2, 3, 4] and stats.pixels_dominated.tolist() == [1, 0, 2, 2]
    assert [e["step"] for e in reporter.of("progress")] == [1, 2]
    with pytest.raises(ValueError):
        importance_scores(fake_render, CAMS, 4, scene="garden")
    with pytest.raises(ValueError):
        importance_scores(fake_render, CAMS, 5)


def test_hidden_gaussian_scores_zero_on_real_renders():
    # a small Gaussian right behind a large opaque one, seen from two cameras on the same side
    splats = splats_of([[0.0, 0, 0], [0.0, 0, -0.5], [1.5, 0, 0]], [[0.8] * 3, [0.1] * 3, [0.2] * 3],
                       [0.99, 0.9, 0.9])
    cams = [make_camera((0.2, 0, 5), up=(0, 1, 0)), make_camera((-0.2, 0.1, 5), up=(0, 1, 0))]
    for scene in ("outdoor", "indoor"):
        scores, seen = importance_scores(lambda c: toy_render(splats, c), cams, 3, scene=scene)
        assert seen.tolist() == [2, 2, 2]
        assert scores[1] == 0 and scores[0] > 0 and scores[2] > 0
    outdoor, _ = importance_scores(lambda c: toy_render(splats, c), cams, 3, scene="outdoor")
    indoor, _ = importance_scores(lambda c: toy_render(splats, c), cams, 3, scene="indoor")
    # indoor favours the big Gaussian (more total weight); outdoor normalises by its area
    assert indoor[0] / indoor[2] > outdoor[0] / outdoor[2]


def test_fallback_scores_rank_sharp_gaussians_above_large_faint_ones():
    """When the simplification floor must keep Gaussians that dominate no pixel, it takes the ones with
    the most weight per pixel, not the large faint blobs of a fog that sum to as much weight."""
    import torch

    from milo_backend.gaussians.importance import fallback_scores, gather_weight_stats
    from milo_backend.render import RenderOutput

    z = torch.zeros(1, 1, 1)

    def view(_camera):  # Gaussian 0: 10 pixels, weight 5; 1: 1000 pixels, weight 5; 2: seen once only
        return RenderOutput(color=z, alpha=z, depth_median=z, depth_expected=z, normals=z, means2d=None, radii=None,
                            weight_sum=torch.tensor([5.0, 5.0, 1.0]), pixels_touched=torch.tensor([10, 1000, 3]),
                            pixels_dominated=torch.zeros(3))

    stats = gather_weight_stats(view, [None, None], 3)
    stats.views_seen[2] = 1
    score = fallback_scores(stats)
    assert score[0] > 10 * score[1] > 0 and score[2] == 0
