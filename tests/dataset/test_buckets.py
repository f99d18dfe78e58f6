"""Bucket list, assignment, no-upscale mode and SDXL crop conditioning (DATASET.md §6-7)."""

from __future__ import annotations

import pytest

from library.dataset.buckets import (
    assign_bucket, crop_ltrb, crop_top_left, make_bucket_list, no_upscale_bucket, num_batches,
    trim_offsets,
)

L1024 = make_bucket_list((1024, 1024), 256, 1024, 64)
L2048 = make_bucket_list((1024, 1024), 256, 2048, 64)
L512 = make_bucket_list((512, 512), 256, 1024, 64)


def test_bucket_list_sizes_and_invariants():
    assert (len(L1024), len(L2048), len(L512)) == (25, 41, 17)
    assert all(1024 in b for b in L1024) and (1024, 576) in L1024 and (768, 1024) in L1024
    for buckets, area, top in ((L1024, 1024 * 1024, 1024), (L2048, 1024 * 1024, 2048)):
        assert buckets == sorted(set(buckets))
        assert all(w * h <= area and max(w, h) <= top for w, h in buckets)


def test_bucket_list_2048_matches_spec_table():
    half = [b for b in L2048 if b[0] <= b[1]]
    assert half == [(256, 2048), (320, 2048), (384, 2048), (448, 2048), (512, 1856), (512, 1920),
                    (512, 1984), (512, 2048), (576, 1664), (576, 1728), (576, 1792), (640, 1536),
                    (640, 1600), (704, 1408), (704, 1472), (768, 1280), (768, 1344),
                    (832, 1216), (896, 1152), (960, 1088), (1024, 1024)]
    assert sorted((h, w) for w, h in half) == [b for b in L2048 if b[0] >= b[1]]


# (image, buckets, expected bucket, expected resized)
VECTORS = [
    ((1000, 800), L1024, (1024, 832), (1040, 832)),
    ((1920, 1080), L1024, (1024, 576), (1024, 576)),
    ((800, 1200), L1024, (704, 1024), (704, 1056)),
    ((3000, 1000), L1024, (1024, 320), (1024, 341)),
    ((1000, 800), L2048, (1152, 896), (1152, 922)),
    ((1920, 1080), L2048, (1344, 768), (1365, 768)),
    ((800, 1200), L2048, (832, 1216), (832, 1248)),
    ((3000, 1000), L2048, (1728, 576), (1728, 576)),
    ((1000, 800), L512, (576, 448), (576, 461)),
    ((1920, 1080), L512, (640, 384), (683, 384)),
    ((1024, 1024), L1024, (1024, 1024), (1024, 1024)),  # exact match
    ((1024, 576), L1024, (1024, 576), (1024, 576)),  # exact match, non-square
    ((512, 512), L1024, (1024, 1024), (1024, 1024)),  # upscaled x2
    ((64, 64), L1024, (1024, 1024), (1024, 1024)),  # tiny, upscaled x16
    ((1, 1), L1024, (1024, 1024), (1024, 1024)),
    ((1023, 1023), L1024, (1024, 1024), (1024, 1024)),
    ((2048, 512), L1024, (1024, 256), (1024, 256)),  # ar 4 = widest bucket
    ((4000, 100), L1024, (1024, 256), (10240, 256)),  # extreme: covers the height
    ((100, 4000), L1024, (256, 1024), (256, 10240)),
    ((1200, 800), L1024, (1024, 704), (1056, 704)),
    ((600, 400), L512, (640, 384), (640, 427)),  # upscaled to cover the width
]


@pytest.mark.parametrize("size,buckets,bucket,resized", VECTORS)
def test_assignment_vectors(size, buckets, bucket, resized):
    choice = assign_bucket(size, buckets)
    assert (choice.bucket, choice.resized) == (bucket, resized)
    assert resized[0] >= bucket[0] and resized[1] >= bucket[1]  # always covers
    assert choice.ar_error == pytest.approx(bucket[0] / bucket[1] - size[0] / size[1])


def test_trim_offsets_centred():
    assert trim_offsets((1040, 832), (1024, 832)) == (8, 0)
    assert trim_offsets((1024, 341), (1024, 320)) == (0, 10)
    assert trim_offsets((704, 1056), (704, 1024)) == (0, 16)


# (image, steps, bucket, resized) at resolution 1024 with bucket_no_upscale
NO_UPSCALE = [
    ((1000, 800), 64, (960, 768), (1000, 800)),
    ((1920, 1080), 64, (1344, 768), (1365, 768)),
    ((300, 200), 64, (256, 192), (300, 200)),
    ((4000, 3000), 64, (1088, 832), (1109, 832)),
    ((1000, 800), 32, (992, 800), (1000, 800)),
    ((1920, 1080), 32, (1344, 768), (1365, 768)),
    ((300, 200), 32, (288, 192), (300, 200)),
    ((4000, 3000), 32, (1152, 864), (1152, 864)),
    ((64, 64), 64, (64, 64), (64, 64)),  # tiny: never upscaled
    ((100, 70), 64, (64, 64), (100, 70)),
    ((50, 50), 64, (0, 0), (50, 50)),  # smaller than a step: prepare() rejects it
]


@pytest.mark.parametrize("size,steps,bucket,resized", NO_UPSCALE)
def test_no_upscale_vectors(size, steps, bucket, resized):
    choice = no_upscale_bucket(size, 1024 * 1024, steps)
    assert (choice.bucket, choice.resized) == (bucket, resized)


# (image, bucket, crop_top_left, crop_top_left when flipped)
SDXL = [
    ((1000, 800), (1024, 832), (6, 0), (6, 0)),
    ((800, 1200), (704, 1024), (0, 10), (0, 11)),
    ((3000, 1000), (1024, 320), (0, 32), (0, 32)),
    ((1920, 1080), (1024, 576), (0, 0), (0, 0)),
]


@pytest.mark.parametrize("size,bucket,ctl,ctl_flipped", SDXL)
def test_sdxl_crop_top_left(size, bucket, ctl, ctl_flipped):
    ltrb = crop_ltrb(bucket, size)
    assert crop_top_left(bucket, ltrb, False) == ctl
    assert crop_top_left(bucket, ltrb, True) == ctl_flipped


def test_num_batches_worked_example():
    assert num_batches([150, 50], 4) == 51
    assert num_batches([1, 0, 5], 2) == 4
