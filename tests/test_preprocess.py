"""Decoding (formats, modes, corrupt files) and the train / eval / 32-pixel preprocessing."""
import io

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from noisy_student.data import preprocess


def _rgb(h=20, w=30, seed=0):
  return np.random.RandomState(seed).randint(0, 256, (h, w, 3)).astype(np.uint8)


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
  buf = io.BytesIO()
  image.save(buf, format=fmt, **kwargs)
  return buf.getvalue()


def test_decode_formats_and_modes():
  rgb = _rgb()
  grey = rgb[..., 0]
  rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 9, np.uint8)], -1)
  palette = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16)
  cases = {
      "png": (_encode(Image.fromarray(rgb), "PNG"), rgb),
      "bmp": (_encode(Image.fromarray(rgb), "BMP"), rgb),
      "grey png": (_encode(Image.fromarray(grey), "PNG"), np.stack([grey] * 3, -1)),
      "rgba png": (_encode(Image.fromarray(rgba), "PNG"), rgb),
      "palette png": (_encode(palette, "PNG"), np.asarray(palette.convert("RGB"))),
      "palette gif": (_encode(palette, "GIF"), np.asarray(palette.convert("RGB"))),
  }
  for name, (encoded, expected) in cases.items():
    out = preprocess.decode_image(tf.constant(encoded))
    assert out.dtype == tf.uint8 and out.shape == (20, 30, 3), name
    np.testing.assert_array_equal(out.numpy(), expected, err_msg=name)
  jpeg_bytes = _encode(Image.fromarray(rgb), "JPEG", quality=95)
  jpeg = preprocess.decode_image(jpeg_bytes)
  assert jpeg.shape == (20, 30, 3)
  pil_jpeg = np.asarray(Image.open(io.BytesIO(jpeg_bytes)).convert("RGB")).astype(int)
  assert np.abs(jpeg.numpy().astype(int) - pil_jpeg).mean() < 2  # IDCTs may differ by 1.
  grey_jpeg = preprocess.decode_image(_encode(Image.fromarray(grey), "JPEG"))
  assert grey_jpeg.shape == (20, 30, 3)


def test_decode_gif_first_frame():
  frames = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (10, 200)]
  buf = io.BytesIO()
  frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
  out = preprocess.decode_image(buf.getvalue()).numpy()
  assert out.shape == (8, 8, 3) and (out == 10).all()


def test_decode_or_skip_counts_and_logs_ids():
  good = _encode(Image.fromarray(_rgb()), "JPEG")
  png = _encode(Image.fromarray(_rgb(seed=1)), "PNG")
  records = [("a", good), ("bad-random", b"not an image at all"),
             ("bad-truncated-jpeg", good[: len(good) // 2]), ("b", png),
             ("bad-truncated-png", png[:60]), ("bad-empty", b""), ("c", good)]
  ds = tf.data.Dataset.from_tensor_slices({
      "id": [r[0] for r in records], "image/encoded": [r[1] for r in records],
      "label": list(range(len(records)))})
  counter = preprocess.SkipCounter()
  out = list(preprocess.decode_or_skip(ds, counter).as_numpy_iterator())
  assert [r["id"] for r in out] == [b"a", b"b", b"c"]
  assert [r["label"] for r in out] == [0, 3, 6]
  assert all(r["image"].shape == (20, 30, 3) for r in out)
  assert counter.count == 4
  assert sorted(counter.ids) == sorted(r[0] for r in records if r[0].startswith("bad"))


def test_center_crop_matches_the_original_rule():
  image = _rgb(100, 200)
  out = preprocess.preprocess_eval(image, 32).numpy()
  crop = int(32 / 64 * 100)  # 50: S / (S + 32) of the shorter side, centred.
  top, left = (100 - crop + 1) // 2, (200 - crop + 1) // 2
  expected = tf.image.resize(image[top:top + crop, left:left + crop].astype(np.float32),
                             [32, 32], method="bicubic")
  np.testing.assert_allclose(out, np.clip(expected.numpy(), 0, 255), atol=1e-3)
  assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 255


def test_distorted_crop_random_deterministic_and_fallback():
  image = _rgb(64, 64)
  a = preprocess.distorted_crop(image, 16, tf.constant([1, 2], tf.int64)).numpy()
  b = preprocess.distorted_crop(image, 16, tf.constant([1, 2], tf.int64)).numpy()
  outs = {preprocess.distorted_crop(image, 16, tf.constant([1, s], tf.int64)).numpy()
          .tobytes() for s in range(6)}
  np.testing.assert_array_equal(a, b)
  assert a.shape == (16, 16, 3) and len(outs) > 3
  # A 2 x 200 strip admits no box with aspect 3/4..4/3 and area >= 8%: centre crop.
  strip = _rgb(2, 200)
  out = preprocess.distorted_crop(strip, 8, tf.constant([0, 0], tf.int64)).numpy()
  np.testing.assert_allclose(out, preprocess.center_crop(strip, 8).numpy(), atol=1e-4)


def test_preprocess_train_output_and_flip():
  image = _rgb(50, 60)
  seed = tf.constant([7, 8], tf.int64)
  out = preprocess.preprocess_train(image, 24, seed, randaug_mag=15.0)
  again = preprocess.preprocess_train(image, 24, seed, randaug_mag=15.0)
  assert out.dtype == tf.float32 and out.shape == (24, 24, 3)
  assert float(tf.reduce_min(out)) >= 0 and float(tf.reduce_max(out)) <= 255
  np.testing.assert_array_equal(out.numpy(), again.numpy())
  no_noise = [preprocess.preprocess_train(image, 24, tf.constant([0, s], tf.int64),
                                          augment_name=None, random_flip=False)
              for s in range(4)]
  flipped = [preprocess.preprocess_train(image, 24, tf.constant([0, s], tf.int64),
                                         augment_name=None, random_flip=True)
             for s in range(4)]
  n_flipped = sum(not np.array_equal(a.numpy(), b.numpy())
                  for a, b in zip(no_noise, flipped))
  assert 0 < n_flipped  # Seeds chosen so at least one of four flips.
  with pytest.raises(ValueError, match="augment_name"):
    preprocess.preprocess_train(image, 24, seed, augment_name="v2")


def test_small_image_path_is_a_padded_window():
  image = _rgb(32, 32).astype(np.float32)
  out = preprocess.preprocess_small_train(
      image.astype(np.uint8), 32, tf.constant([1, 1], tf.int64), augment_name=None).numpy()
  padded = np.pad(image, [(4, 4), (4, 4), (0, 0)], mode="reflect")
  windows = [padded[y:y + 32, x:x + 32] for y in range(9) for x in range(9)]
  assert any(np.allclose(out, w, atol=1e-3) for w in windows)
  digits_like = np.random.RandomState(0).randint(0, 256, (8, 8, 3)).astype(np.uint8)
  aug = preprocess.preprocess_small_train(digits_like, 32, tf.constant([2, 3], tf.int64),
                                          randaug_mag=5.0, cutout=True)
  assert aug.shape == (32, 32, 3) and aug.dtype == tf.float32


def test_small_eval_does_not_crop():
  image = _rgb(32, 32)
  out = preprocess.preprocess_eval(image, 32, small_image=True).numpy()
  np.testing.assert_allclose(out, image, atol=1e-3)


def test_eval_preprocessing_in_a_saved_model(tmp_path):
  class Serve(tf.Module):

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(self, image_bytes):
      return tf.map_fn(lambda b: preprocess.preprocess_eval(preprocess.decode_image(b), 16),
                       image_bytes, fn_output_signature=tf.float32)

  encoded = _encode(Image.fromarray(_rgb(40, 50)), "PNG")
  path = str(tmp_path / "serve")
  tf.saved_model.save(Serve(), path)
  loaded = tf.saved_model.load(path)
  out = loaded.serve(tf.constant([encoded, encoded])).numpy()
  expected = preprocess.preprocess_eval(preprocess.decode_image(encoded), 16).numpy()
  assert out.shape == (2, 16, 16, 3)
  np.testing.assert_allclose(out[1], expected, atol=1e-4)
