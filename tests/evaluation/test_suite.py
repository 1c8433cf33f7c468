"""The evaluation protocol's rules: names, seeds, the rank split, the output-folder check, VBench's total."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from streamr1.evaluation.suite import (
    MANIFEST,
    MANIFEST_FORMAT,
    build_items,
    check_output_dir,
    rank_batches,
    video_name,
    video_seed,
    video_stem,
)
from streamr1.evaluation.vbench import NORMALIZE, vbench_totals


def _sha10(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def test_a_safe_prompt_names_its_videos_as_vbench_standard_mode_expects():
    p = "A 3D model of a 1800s victorian house."
    assert video_name(p, 0) == "A 3D model of a 1800s victorian house.-0.mp4"
    assert video_name(p, 4) == "A 3D model of a 1800s victorian house.-4.mp4"
    # punctuation VBench prompts carry stays (standard mode looks the exact prompt up)
    assert video_stem("a cat, 'jumping': yes?") == "a cat, 'jumping': yes?"


def test_unsafe_characters_are_replaced_and_the_prompt_hash_appended():
    assert video_name("AC/DC on stage", 1) == f"AC_DC on stage~{_sha10('AC/DC on stage')}-1.mp4"
    assert video_stem("line one\nline two") == f"line one_line two~{_sha10('line one' + chr(10) + 'line two')}"
    assert video_stem(".hidden") == f"_hidden~{_sha10('.hidden')}"
    # "a_b" is a safe name of its own; "a/b" must not collide with it
    assert video_stem("a_b") == "a_b" != video_stem("a/b")


def test_an_over_long_prompt_is_cut_to_fit_255_bytes_with_the_hash():
    long = "a very long prompt " * 20  # 380 bytes
    stem = video_stem(long.strip())
    name = video_name(long.strip(), 999999)
    assert len(name.encode()) <= 255
    # the budget: 255 - len("-999999.mp4") = 244 bytes for the stem, of which 11 are "~" + 10 hex digits
    assert stem == long.strip()[:233] + "~" + _sha10(long.strip())
    # two prompts that differ only after the cut get different names
    assert video_stem("x" * 300 + "1") != video_stem("x" * 300 + "2")
    # multi-byte characters are never split: the stem is valid UTF-8 and within budget
    wide = "视频" * 100  # 600 bytes
    stem = video_stem(wide)
    assert len(stem.encode()) <= 244 and stem.encode().decode() == stem and stem.startswith("视频")
    # exactly at the limit the prompt is kept
    fits = "y" * 244
    assert video_stem(fits) == fits and video_stem(fits + "y") != fits + "y"


def test_seed_is_a_hash_of_the_prompt_and_index():
    expected = int.from_bytes(hashlib.sha256(b"0\0a red ball\x003").digest()[:8], "little") & ((1 << 63) - 1)
    assert video_seed("a red ball", 3) == expected
    assert video_seed("a red ball", 3, base_seed=1) != expected
    seeds = {video_seed(p, i) for p in ("a", "b", "c") for i in range(5)}
    assert len(seeds) == 15


@pytest.mark.parametrize("n,bs,world", [(10, 3, 2), (10, 3, 3), (7, 1, 4), (3, 5, 2), (12, 4, 1), (1, 1, 3)])
def test_ranks_split_the_suite_without_duplicates_or_gaps(n, bs, world):
    parts = [rank_batches(n, bs, r, world) for r in range(world)]
    flat = [i for part in parts for b in part for i in b]
    assert sorted(flat) == list(range(n))  # every item once
    # a batch is the same whatever the world size: the same videos are generated together
    single = {tuple(b) for b in rank_batches(n, bs, 0, 1)}
    assert {tuple(b) for part in parts for b in part} == single


def test_items_keep_names_and_seeds_of_the_original_prompt_when_generated_from_extended_ones():
    items = build_items(["a cat", "a dog"], 2, extended=["a fluffy cat, 4k", "a dog running on grass"])
    assert [(it.name, it.generate_from) for it in items] == [
        ("a cat-0.mp4", "a fluffy cat, 4k"), ("a cat-1.mp4", "a fluffy cat, 4k"),
        ("a dog-0.mp4", "a dog running on grass"), ("a dog-1.mp4", "a dog running on grass")]
    assert items[1].seed == video_seed("a cat", 1)


@pytest.mark.parametrize("prompts,n,extended,match", [
    ([], 5, None, "suite is empty"),
    (["a"], 0, None, "num_samples must be >= 1"),
    (["a", "  "], 1, None, "blank prompts"),
    (["a", "b", "a"], 1, None, "twice"),
    (["a", "b"], 1, ["x"], "1 extended prompts for 2 prompts"),
])
def test_bad_suites_are_refused(prompts, n, extended, match):
    with pytest.raises(ValueError, match=match):
        build_items(prompts, n, extended)


def _folder(tmp_path, names, fingerprint=None):
    os.makedirs(tmp_path / "videos", exist_ok=True)
    for n in names:
        (tmp_path / "videos" / n).write_bytes(b"x")
    if fingerprint is not None:
        (tmp_path / MANIFEST).write_text(json.dumps({"format": MANIFEST_FORMAT, "fingerprint": fingerprint}))


def test_output_folder_of_another_run_is_refused_and_the_same_run_resumes(tmp_path):
    names = ["a-0.mp4", "a-1.mp4"]
    assert check_output_dir(str(tmp_path / "new"), {"seed": 0}, names) == []  # absent folder: start
    _folder(tmp_path, ["a-0.mp4"], {"seed": 0})
    assert check_output_dir(str(tmp_path), {"seed": 0}, names) == []  # same run: resume
    with pytest.raises(ValueError, match=r"differs in \['seed'\].*overwrite"):
        check_output_dir(str(tmp_path), {"seed": 1}, names)
    assert check_output_dir(str(tmp_path), {"seed": 1}, names, overwrite=True) == [str(tmp_path / "videos" / "a-0.mp4")]
    with pytest.raises(ValueError, match="would not write"):
        check_output_dir(str(tmp_path), {"seed": 0}, ["b-0.mp4"])


def test_videos_without_a_manifest_are_refused(tmp_path):
    _folder(tmp_path, ["someone else-0.mp4"])
    with pytest.raises(ValueError, match="1 videos that no streamr1 evaluation manifest describes"):
        check_output_dir(str(tmp_path), {"seed": 0}, ["a-0.mp4"])


def test_vbench_total_follows_vbench_cal_final_score():
    lows = {d: lo for d, (lo, _) in NORMALIZE.items()}
    highs = {d: hi for d, (_, hi) in NORMALIZE.items()}
    assert vbench_totals(highs) == pytest.approx({"quality": 1.0, "semantic": 1.0, "total": 1.0})
    assert vbench_totals(lows) == pytest.approx({"quality": 0.0, "semantic": 0.0, "total": 0.0})
    # only subject consistency at its max: quality = 1 / (6 + 0.5) (dynamic degree weighs 0.5), semantic 0,
    # total = (4 * quality + 1 * 0) / 5
    one = dict(lows, subject_consistency=1.0)
    assert vbench_totals(one) == pytest.approx({"quality": 1 / 6.5, "semantic": 0.0, "total": 4 / 6.5 / 5})
    # dynamic degree halfway: 0.5 * 0.5 weight
    assert vbench_totals(dict(lows, dynamic_degree=0.5))["quality"] == pytest.approx(0.25 / 6.5)
    # incomplete: no total
    assert vbench_totals({"subject_consistency": 0.9}) == {}
