"""The training prompt stream: every prompt reachable, rank-strided, resumable from any batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamr1.data.prompts import PromptDataModule, PromptStreamSampler, ResumablePromptLoader, read_prompts


def _indices(loader) -> list[int]:
    return [int(i) for batch in loader for i in batch["index"]]


def test_a_pass_is_the_numpy_permutation_of_the_whole_list():
    s = PromptStreamSampler(7, samples_per_epoch=None, seed=3)
    assert len(s) == 7
    s.set_epoch(0)
    assert list(s) == np.random.default_rng([3, 0]).permutation(7).tolist()
    s.set_epoch(1)
    assert list(s) == np.random.default_rng([3, 1]).permutation(7).tolist()  # each pass is shuffled anew


def test_epochs_shorter_than_the_list_continue_the_stream_so_every_prompt_is_drawn():
    # 10 prompts, 4 a epoch: epochs 0, 1 and the first half of 2 are pass 0, the rest starts pass 1
    s = PromptStreamSampler(10, samples_per_epoch=4, seed=0)
    drawn = []
    for e in range(5):
        s.set_epoch(e)
        drawn.append(list(s))
    flat = [i for ep in drawn for i in ep]
    assert flat == np.random.default_rng([0, 0]).permutation(10).tolist() + \
        np.random.default_rng([0, 1]).permutation(10).tolist()
    assert sorted(flat[:10]) == list(range(10))


def test_a_list_longer_than_the_default_epoch_is_covered_by_consecutive_epochs():
    """The issue's case scaled down 4x: 250,000 prompts, the default 100,000-sample epoch. The old cycling dataset
    (``i % len(prompts)`` over 100,000 indices) could only ever draw the first 100,000 prompts."""
    prompts = [f"p{i}" for i in range(250_000)]
    dm = PromptDataModule(prompts=prompts, batch_size=1000)
    assert dm.samples_per_epoch == 100_000
    loader = dm.train_dataloader()
    assert len(loader) == 100  # 100,000 samples a epoch in batches of 1000
    seen = np.zeros(len(prompts), dtype=np.int64)
    for epoch in range(3):  # 300,000 draws: pass 0 (250,000) and the first 50,000 of pass 1
        loader.sampler.set_epoch(epoch)
        idx = np.asarray(_indices(loader))
        np.add.at(seen, idx, 1)
        assert len(idx) == 100_000
    assert seen.min() >= 1 and seen.max() <= 2 and seen.sum() == 300_000
    assert (seen == 2).sum() == 50_000


def test_ranks_split_each_epoch_without_overlap():
    both = [PromptStreamSampler(9, samples_per_epoch=9, num_replicas=2, rank=r, seed=5) for r in (0, 1)]
    for s in both:
        s.set_epoch(2)
    r0, r1 = (list(s) for s in both)
    assert len(r0) == len(r1) == 5  # ceil(9 / 2): one position is the next pass's (no padding by repetition)
    single = PromptStreamSampler(9, samples_per_epoch=10, seed=5)
    single.set_epoch(2)
    whole = list(single)
    assert r0 == whole[0::2] and r1 == whole[1::2]  # rank r takes positions r, r + 2, ... of the epoch


def _loader(prompts, batch_size=2, samples=None, replicas=1, rank=0, seed=0):
    from streamr1.data.prompts import PromptDataset, collate_prompts

    sampler = PromptStreamSampler(len(prompts), samples, num_replicas=replicas, rank=rank, seed=seed)
    return ResumablePromptLoader(PromptDataset(prompts), batch_size=batch_size, sampler=sampler,
                                 collate_fn=collate_prompts)


@pytest.mark.parametrize("stop", [0, 1, 3, 5])
def test_state_dict_resumes_at_the_next_batch(stop):
    prompts = [f"p{i}" for i in range(11)]
    full = _loader(prompts)
    full.sampler.set_epoch(1)
    expected = [b["prompt"] for b in full]  # 6 batches (the last has one prompt)
    a = _loader(prompts)
    a.sampler.set_epoch(1)
    it = iter(a)
    for _ in range(stop):
        next(it)
    state = a.state_dict()
    assert state == {"epoch": 1, "batches": stop, "batch_size": 2, "num_replicas": 1, "num_prompts": 11, "seed": 0}
    b = _loader(prompts)
    b.load_state_dict(state)
    b.sampler.set_epoch(1)  # what Lightning's fit loop does after loading: same epoch, the offset stays
    assert [x["prompt"] for x in b] == expected[stop:]
    b.sampler.set_epoch(2)  # and the next epoch is whole again
    assert len(list(b)) == 6


def test_state_at_the_end_of_an_epoch_points_at_the_next_one():
    a = _loader(["x", "y", "z"], batch_size=1)
    a.sampler.set_epoch(4)
    list(a)
    assert a.state_dict()["epoch"] == 5 and a.state_dict()["batches"] == 0
    a.sampler.set_epoch(5)  # a new epoch started, nothing taken yet
    assert (a.state_dict()["epoch"], a.state_dict()["batches"]) == (5, 0)


def test_changed_prompt_list_warns_and_restarts_the_epoch():
    a = _loader([f"p{i}" for i in range(6)])
    it = iter(a)
    next(it)
    b = _loader([f"p{i}" for i in range(7)])
    with pytest.warns(UserWarning, match="checkpoint's prompt order is of 6 prompts with seed 0, this run has 7"):
        b.load_state_dict(a.state_dict())
    assert len(list(b)) == 4


def test_workers_start_after_the_resume_offset_is_known():
    prompts = [f"p{i}" for i in range(8)]
    full = _loader(prompts)
    expected = [b["prompt"] for b in full]
    from streamr1.data.prompts import PromptDataset, collate_prompts

    b = ResumablePromptLoader(PromptDataset(prompts), batch_size=2, sampler=PromptStreamSampler(8), num_workers=1,
                              collate_fn=collate_prompts)
    it = iter(b)  # Lightning creates the iterator before it loads the state
    b.load_state_dict({"epoch": 0, "batches": 2, "batch_size": 2, "num_replicas": 1, "num_prompts": 8, "seed": 0})
    assert [x["prompt"] for x in it] == expected[2:]


def test_empty_prompt_sources_are_refused_with_the_fix(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n   \n")
    with pytest.raises(ValueError, match=r"empty\.txt' is empty: it needs at least one non-blank line"):
        read_prompts(str(empty))
    with pytest.raises(ValueError, match="needs `prompts_file`"):
        PromptDataModule(prompts=[])
    with pytest.raises(ValueError, match="samples_per_epoch must be >= 1 or null"):
        PromptDataModule(prompts=["a"], samples_per_epoch=0)


def test_inference_loaders_keep_the_list_order():
    dm = PromptDataModule(prompts=["a", "b", "c"], val_prompts=["v1", "v2", "v3"], batch_size=2)
    assert [p for b in dm.val_dataloader() for p in b["prompt"]] == ["v1", "v2", "v3"]
    assert [int(i) for b in dm.predict_dataloader() for i in b["index"]] == [0, 1, 2]
    assert isinstance(next(iter(dm.train_dataloader()))["index"], torch.Tensor)
