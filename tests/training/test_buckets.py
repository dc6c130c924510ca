"""latentgen.training.buckets: kohya's bucket sizes, the nearest bucket, cover-and-crop, and one-bucket batches."""

from PIL import Image

from latentgen.training import buckets


def test_the_buckets_of_512_are_kohyas():
    found = buckets.resolutions(512, 256, 1024, 64)
    assert found == [(256, 832), (256, 896), (256, 960), (256, 1024), (320, 704), (320, 768), (384, 640), (448, 576),
                     (512, 512), (576, 448), (640, 384), (704, 320), (768, 320), (832, 256), (896, 256), (960, 256),
                     (1024, 256)]
    for w, h in found:  # each: at most 512^2 pixels, sides multiples of 64 in [256, 1024], the other side maximal
        assert w * h <= 512 * 512 and w % 64 == h % 64 == 0 and 256 <= min(w, h) and max(w, h) <= 1024
        assert (h, w) in found and (max(w, h) == 1024 or min(w, h) == 512 or (min(w, h) + 64) * max(w, h) > 512 * 512)
    assert all(w * h <= 64 * 64 and w % 8 == 0 and h % 8 == 0 for w, h in buckets.resolutions(64, 32, 128, 8))


def test_an_image_goes_to_the_nearest_shape_covered_and_center_cropped():
    sizes = buckets.resolutions(512, 256, 1024, 64)
    assert buckets.nearest((1200, 800), sizes) == (640, 384) and buckets.nearest((800, 1200), sizes) == (384, 640)
    assert buckets.nearest((1000, 1000), sizes) == (512, 512)
    image = Image.new("RGB", (1200, 800), (0, 0, 0))
    image.paste((255, 0, 0), (0, 0, 1200, 30))  # a red strip along the top edge: cropped away
    fitted, (top, left) = buckets.fit(image, (640, 384))
    assert fitted.size == (640, 384) and (top, left) == ((427 - 384) // 2, 0)  # resized to 640 x 427, then cut
    assert fitted.getpixel((100, 0)) == (0, 0, 0)
    tall, (top, left) = buckets.fit(Image.new("RGB", (500, 1000)), (448, 576))
    assert tall.size == (448, 576) and (top, left) == ((896 - 576) // 2, 0)


def test_each_batch_holds_one_bucket_and_an_epoch_holds_every_image_once():
    bucket_of = ["a"] * 5 + ["b"] * 3 + ["c"]
    one = buckets.epoch_batches(bucket_of, 2, seed=0, epoch=0)
    assert sorted(i for b in one for i in b) == list(range(9))
    assert all(len({bucket_of[i] for i in b}) == 1 and 1 <= len(b) <= 2 for b in one) and len(one) == 3 + 2 + 1
    assert one == buckets.epoch_batches(bucket_of, 2, seed=0, epoch=0)  # a function of (seed, epoch)
    assert one != buckets.epoch_batches(bucket_of, 2, seed=0, epoch=1)


def test_no_upscale_keeps_small_images_and_shrinks_large_ones_to_the_area():
    assert buckets.no_upscale((40, 24), 64 * 64, 8) == ((40, 24), (40, 24))  # small: its own size
    assert buckets.no_upscale((50, 30), 64 * 64, 8) == ((48, 24), (50, 30))  # rounded down: cropped, not resized
    bucket, resized = buckets.no_upscale((200, 100), 64 * 64, 8)  # 2:1, 20000 px > 4096: shrunk, aspect kept
    assert resized == (80, 40) and bucket == (80, 40)  # the height rounding keeps 2:1 exactly (the width's: 88x40)
    bucket, resized = buckets.no_upscale((1000, 301), 512 * 512, 64)
    assert resized[0] * resized[1] <= 512 * 512 * 1.1 and abs(resized[0] / resized[1] - 1000 / 301) < 0.05
    assert bucket[0] % 64 == bucket[1] % 64 == 0 and bucket[0] <= resized[0] and bucket[1] <= resized[1]
    image = Image.new("RGB", (50, 30))
    fitted, crop = buckets.fit(image, (48, 24), resized=(50, 30))
    assert fitted.size == (48, 24) and crop == (3, 1)  # (top, left) of the center crop, no resize
