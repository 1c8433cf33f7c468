"""The reward benchmark (``python -m streamr1.bench.reward``) at a tiny size: both schemes give the same scores and
saliency (SPEC.md §4.5), and the table has every figure."""

from __future__ import annotations

import json

import torch

from streamr1.bench.reward import main, make_service, random_videoalign, reference_scheme, service_scheme


def test_reference_and_service_schemes_give_the_same_saliency():
    reward = random_videoalign(tiny=True, layers=1, vision_layers=1, size=(56, 84), prompts=["a b"])
    service = make_service(reward, torch.device("cpu"))
    video = torch.rand(2, 7, 3, 70, 100, generator=torch.Generator().manual_seed(0))
    prompts = ["a corgi", "a cat on a boat"]
    ref_scores, ref_sal = reference_scheme(reward, video, prompts)
    f0, b0 = service.forward_calls, service.backward_calls
    our_scores, our_sal = service_scheme(service, video, prompts)
    assert (service.forward_calls - f0, service.backward_calls - b0) == (1, 1)  # one forward, one batched backward
    assert service.batched_grad_fallbacks == 0
    for a in ("VQ", "MQ", "TA"):
        torch.testing.assert_close(our_scores[a], ref_scores[a], atol=1e-5, rtol=1e-5)
    assert ref_sal.shape == our_sal.shape == (3, 2, 7, 70, 100)
    torch.testing.assert_close(our_sal, ref_sal, atol=1e-7, rtol=1e-4)
    # Frame 6 is dropped (7 is odd): no saliency there; every scored frame has some.
    assert float(ref_sal[:, :, 6].abs().max()) == 0.0
    assert bool((ref_sal[:, :, :6].flatten(3).amax(dim=3) > 0).all())


def test_bench_main_tiny(tmp_path, capsys):
    out = tmp_path / "reward.json"
    rows = main(["--tiny", "--layers", "1", "--vision-layers", "1", "--frames", "5", "--size", "56", "56",
                 "--repeats", "1", "--json", str(out)])
    text = capsys.readouterr().out
    for name in ("ours", "ours, per-axis backward"):
        assert f"time {name} / reference" in text and f"peak memory {name} / reference" in text
    metrics = {r.metric: r.value for r in rows}
    assert metrics["saliency max |ours - reference| / max reference"] < 1e-3
    saved = json.loads(out.read_text())
    assert saved["settings"]["video"].startswith("1 x 5 frames") and len(saved["rows"]) == len(rows)
