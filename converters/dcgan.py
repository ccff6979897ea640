"""DCGAN generators (pytorch/examples topology) from PyTorch state dicts.

The pytorch/examples ``Generator`` keeps its layers in ``nn.Sequential`` as ``self.main``::

    main.0  ConvTranspose2d(nz [+ classes], ngf*2^(d-2), 4, 1, 0, bias=False)
    main.1  BatchNorm2d        main.2  ReLU
    main.3  ConvTranspose2d(.., .., 4, 2, 1, bias=False) ...
    main.K  ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False)      main.K+1  Tanh

Owners save it in many ways; all of these are read:

* a bare state dict (``torch.save(netG.state_dict())``), ``.pth``/``.pt``/``.bin`` (zip or legacy
  format, tensors on CPU or CUDA) or ``.safetensors``;
* keys with or without ``main.`` and with ``module.`` (``DataParallel``) prefixes;
* a checkpoint dict wrapping it (``{"netG": sd, "netD": ..., "epoch": 7}``): the first of
  :data:`GENERATOR_KEYS` holding a state dict is taken, or the entry named by ``key=``;
  ``key=`` may also name a key prefix (``key="generator"`` for ``generator.main.0.weight``).

Nothing about the layout is assumed: the indexed modules are sorted by index (ReLU, Dropout,
Tanh have no tensors, so indices skip) and each is classified by its tensors (a 4-D ``weight``
alone is a ConvTranspose2d, a 1-D ``weight`` with ``running_mean``/``running_var`` is a
BatchNorm2d). Depth (4 to 7 transposed convolutions), ``nz``, ``ngf``, ``nc``, BatchNorm or
not, and the output size (32 to 256) are inferred from the shapes. Conditional DCGANs whose
first layer takes noise concatenated with a one-hot class vector are read when the user gives
``nz`` (or ``num_classes``): the first layer's input channels are ``nz + num_classes``.
Anything else (a bias on a transposed convolution, a Linear layer, an embedding, channel
counts that do not halve) is refused with one clear line, never guessed around.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from converters import layout
from converters.base import Converted, abstract_template, fill_template, flax_key, sha256_file
from converters.errors import ArchitectureError, ConversionError, preview
from converters.readers import (
    TensorTable,
    find_state_dict,
    load_checkpoint,
    require_finite,
    strip_prefixes,
)
from ronan_jax.models import dcgan
from ronan_jax.models.dcgan import class_conditioned  # re-exported: see its docstring

__all__ = [
    "GENERATOR_KEYS",
    "class_conditioned",
    "convert_dcgan",
    "convert_dcgan_state_dict",
]

# Entries of a checkpoint dict that hold the generator's state dict, in order of preference.
GENERATOR_KEYS = (
    "netG",
    "netG_state_dict",
    "G",
    "G_state_dict",
    "generator",
    "generator_state_dict",
    "gen",
    "state_dict",
    "model",
    "model_state_dict",
)
# First components of module prefixes that name the generator when a state dict holds several
# networks (e.g. Lightning's ``generator.main.0.weight`` next to ``discriminator.main.0.weight``).
_GENERATOR_PREFIXES = ("netG", "G", "generator", "gen", "netg")

_KEY = re.compile(
    r"^(?P<prefix>(?:[A-Za-z_]\w*\.)*)(?P<idx>\d+)\."
    r"(?P<param>weight|bias|running_mean|running_var|num_batches_tracked)$"
)
_BN_STATS = ("running_mean", "running_var")
MIN_DEPTH, MAX_DEPTH = 4, 7


@dataclasses.dataclass(frozen=True)
class _Module:
    index: int
    kind: str  # "convt" | "bn"
    keys: dict[str, str]  # param name -> full state-dict key
    shape: tuple[int, ...]  # of its weight


def convert_dcgan(
    src: str | Path,
    *,
    key: str | None = None,
    nz: int | None = None,
    num_classes: int | None = None,
    image_size: int | None = None,
    resize_to: int = 0,
    resize_method: str = "linear",
    convt_impl: str = "lax",
) -> Converted:
    """Read a DCGAN generator checkpoint file and convert it (nothing is written).

    Args:
        src: ``.pth``/``.pt``/``.bin``/``.ckpt`` or ``.safetensors`` file.
        key: checkpoint-dict entry (``"a/b"`` for nested) or key prefix of the generator.
        nz: noise size; needed to tell a conditional model's class inputs from noise.
        num_classes: number of classes of a conditional model (else inferred from ``nz``).
        image_size: expected native output size, verified against the inferred one.
        resize_to: resize the [0, 1] output to this side (0: no resize); stored in the card.
        resize_method: ``"linear"`` or ``"cubic"``, antialiased (see ``DCGANApply``).
        convt_impl: ``"lax"`` or ``"subpixel"`` transposed-convolution formulation.
    """
    src = Path(src)
    obj = load_checkpoint(src)
    state, entry, key_was_entry = _select(obj, key, str(src))
    out = convert_dcgan_state_dict(
        state,
        source=str(src),
        key=None if key_was_entry else key,
        nz=nz,
        num_classes=num_classes,
        image_size=image_size,
        resize_to=resize_to,
        resize_method=resize_method,
        convt_impl=convt_impl,
    )
    return dataclasses.replace(
        out,
        summary={**out.summary, "state_dict_entry": entry},
        sources={str(src): sha256_file(src)},
    )


def _select(
    obj: Any, key: str | None, source: str
) -> tuple[dict[str, np.ndarray], str | None, bool]:
    """State dict, the checkpoint-dict entry it came from, and whether ``key`` named that
    entry (otherwise ``key`` is a key prefix inside the state dict)."""
    if key is not None and isinstance(obj, Mapping) and key.split("/")[0] in obj:
        state, entry = find_state_dict(obj, GENERATOR_KEYS, key=key, source=source)
        return state, entry, True
    state, entry = find_state_dict(obj, GENERATOR_KEYS, source=source)
    return state, entry, False


def convert_dcgan_state_dict(
    state: Mapping[str, np.ndarray],
    *,
    source: str = "state dict",
    key: str | None = None,
    nz: int | None = None,
    num_classes: int | None = None,
    image_size: int | None = None,
    resize_to: int = 0,
    resize_method: str = "linear",
    convt_impl: str = "lax",
) -> Converted:
    """Convert a DCGAN generator state dict (NumPy arrays) already read from a file.

    ``key`` here can only be a key prefix (``"generator"``); see :func:`convert_dcgan`.
    """
    state = strip_prefixes(state, ("module.",))
    prefix, own_keys, ignored = _choose_prefix(state, key, source)
    modules = _classify(state, prefix, own_keys, source)
    config, summary = _infer_config(
        modules, source, nz=nz, num_classes=num_classes, image_size=image_size,
        resize_to=resize_to, resize_method=resize_method, convt_impl=convt_impl,
    )
    variables = _variables(state, modules, own_keys, config, source)
    _check_forward(config, variables, source)
    summary.update(
        prefix=prefix,
        ignored_keys=len(ignored),
        modules=[[m.index, m.kind, list(m.shape)] for m in modules],
    )
    return Converted(
        architecture="dcgan",
        config=dataclasses.asdict(config),
        variables=variables,
        summary=summary,
        sources={},
    )


def _choose_prefix(
    state: Mapping[str, np.ndarray], key: str | None, source: str
) -> tuple[str, list[str], list[str]]:
    """The module prefix of the generator's Sequential, the keys belonging to the generator,
    and the keys of other networks in the same dict (ignored)."""
    groups: dict[str, list[str]] = {}
    for k in state:
        m = _KEY.match(k)
        if m:
            groups.setdefault(m["prefix"], []).append(k)
    if not groups:
        raise ArchitectureError(
            f"{source}: not a DCGAN generator: no keys of the form [main.]N.weight "
            f"(found {preview(sorted(state))})"
        )
    if key is not None:
        want = key.rstrip(".") + "."
        chosen = [p for p in groups if p.startswith(want)]
        if not chosen:
            raise ConversionError(
                f"{source}: no module prefix starts with {want!r} (prefixes: {preview(sorted(groups))})"
            )
    elif len(groups) == 1:
        chosen = list(groups)
    else:
        chosen = [p for p in groups if p.split(".")[0] in _GENERATOR_PREFIXES]
        if not chosen:
            raise ConversionError(
                f"{source}: several networks in one state dict (prefixes "
                f"{preview(sorted(groups))}); name the generator's with key=..."
            )
    if len(chosen) != 1:
        raise ConversionError(
            f"{source}: several candidate generator prefixes ({preview(sorted(chosen))}); "
            "name one with key=..."
        )
    prefix = chosen[0]
    if len(groups) == 1 or not prefix:
        return prefix, list(state), []  # every key is the generator's: strays are errors
    # Several networks: the generator owns the keys under its prefix's first component.
    root = prefix.split(".")[0] + "."
    own = [k for k in state if k.startswith(root)]
    return prefix, own, [k for k in state if not k.startswith(root)]


def _classify(
    state: Mapping[str, np.ndarray], prefix: str, own_keys: list[str], source: str
) -> list[_Module]:
    by_index: dict[int, dict[str, str]] = {}
    for k in own_keys:
        m = _KEY.match(k)
        if m and m["prefix"] == prefix:
            by_index.setdefault(int(m["idx"]), {})[m["param"]] = k
    modules = []
    for idx in sorted(by_index):
        keys = by_index[idx]
        names = set(keys)
        weight = state[keys["weight"]] if "weight" in keys else None
        where = f"{prefix}{idx}"
        if weight is not None and weight.ndim == 4 and names == {"weight"}:
            modules.append(_Module(idx, "convt", keys, tuple(weight.shape)))
        elif weight is not None and weight.ndim == 4 and "bias" in names:
            raise ArchitectureError(
                f"{source}: {where} is a convolution with a bias; the pytorch/examples DCGAN "
                "uses bias=False everywhere, this is another architecture"
            )
        elif weight is not None and weight.ndim == 1 and {"weight", "bias"} <= names:
            if not set(_BN_STATS) <= names:
                raise ArchitectureError(
                    f"{source}: {where} is a norm layer without running statistics "
                    "(not an inference-mode BatchNorm2d)"
                )
            modules.append(_Module(idx, "bn", keys, tuple(weight.shape)))
        else:
            shapes = ", ".join(f"{n} {tuple(state[k].shape)}" for n, k in sorted(keys.items()))
            raise ArchitectureError(
                f"{source}: {where} ({shapes}) is neither a ConvTranspose2d nor a BatchNorm2d; "
                "not a pytorch/examples DCGAN generator"
            )
    return modules


def _infer_config(
    modules: list[_Module],
    source: str,
    *,
    nz: int | None,
    num_classes: int | None,
    image_size: int | None,
    resize_to: int,
    resize_method: str,
    convt_impl: str,
) -> tuple[dcgan.DCGANConfig, dict[str, Any]]:
    convs = [m for m in modules if m.kind == "convt"]
    if not convs or modules[0].kind != "convt" or modules[-1].kind != "convt":
        raise ArchitectureError(
            f"{source}: a DCGAN generator starts and ends with a ConvTranspose2d "
            f"(modules: {preview([f'{m.index}:{m.kind}' for m in modules])})"
        )
    for a, b in itertools.pairwise(modules):
        if a.kind == "bn" and b.kind == "bn":
            raise ArchitectureError(f"{source}: two BatchNorms in a row at modules {a.index}, {b.index}")
    n_bn = sum(m.kind == "bn" for m in modules)
    depth = len(convs)
    if n_bn not in (0, depth - 1):
        raise ArchitectureError(
            f"{source}: {n_bn} BatchNorms for {depth} transposed convolutions; expected "
            f"{depth - 1} (one after each but the last) or none"
        )
    if not MIN_DEPTH <= depth <= MAX_DEPTH:
        raise ArchitectureError(
            f"{source}: {depth} transposed convolutions; supported DCGANs have "
            f"{MIN_DEPTH} to {MAX_DEPTH} (32x32 to 256x256 output)"
        )
    for m in convs:
        if m.shape[2:] != (4, 4):
            raise ArchitectureError(
                f"{source}: module {m.index} has a {m.shape[2]}x{m.shape[3]} kernel; "
                "DCGAN transposed convolutions are 4x4"
            )
    # Channel chain: ConvTranspose2d weight is (in, out, kh, kw); BatchNorm follows its conv.
    prev_out = None
    for m in modules:
        if m.kind == "convt":
            if prev_out is not None and m.shape[0] != prev_out:
                raise ArchitectureError(
                    f"{source}: module {m.index} takes {m.shape[0]} channels but the layer "
                    f"before gives {prev_out} (is this a discriminator or another network?)"
                )
            prev_out = m.shape[1]
        elif m.shape[0] != prev_out:
            raise ArchitectureError(
                f"{source}: BatchNorm {m.index} has {m.shape[0]} channels after a "
                f"{prev_out}-channel convolution"
            )
    outs = [m.shape[1] for m in convs]
    nc, ngf = outs[-1], outs[-2]
    expected = [ngf * 2 ** (depth - 2 - i) for i in range(depth - 1)]
    if outs[:-1] != expected:
        raise ArchitectureError(
            f"{source}: channel widths {outs[:-1]} do not halve layer by layer as in "
            f"the pytorch/examples DCGAN (expected {expected})"
        )
    in0 = convs[0].shape[0]
    if nz is not None and num_classes is not None and nz + num_classes != in0:
        raise ArchitectureError(
            f"{source}: nz={nz} + num_classes={num_classes} != {in0} input channels of the first layer"
        )
    if nz is not None:
        classes = in0 - nz
    elif num_classes is not None:
        classes = num_classes
    else:
        classes = 0
    noise = in0 - classes
    if noise <= 0 or classes < 0:
        raise ArchitectureError(
            f"{source}: the first layer takes {in0} channels; nz={nz}, num_classes={num_classes} "
            "do not fit"
        )
    # Output size by PyTorch's ConvTranspose2d rule: (H - 1) * stride - 2 * padding + kernel,
    # stride/padding (1, 0) for the first layer and (2, 1) after, as pytorch/examples.
    size = 1
    for i in range(depth):
        stride, pad = (1, 0) if i == 0 else (2, 1)
        size = (size - 1) * stride - 2 * pad + 4
    try:
        config = dcgan.DCGANConfig(
            nz=noise, ngf=ngf, nc=nc, depth=depth, batchnorm=n_bn > 0, num_classes=classes,
            convt_impl=convt_impl, resize_to=int(resize_to or 0), resize_method=resize_method,
        )
    except ValueError as exc:
        raise ConversionError(f"{source}: {exc}") from exc
    if size != config.image_size:  # pragma: no cover - the two formulas agree by construction
        raise ArchitectureError(f"{source}: inferred output size {size} != {config.image_size}")
    if image_size is not None and int(image_size) != size:
        raise ArchitectureError(
            f"{source}: the checkpoint makes {size}x{size} images ({depth} transposed "
            f"convolutions), not the expected {image_size}x{image_size}; use resize_to to resize"
        )
    summary = {
        "depth": depth,
        "nz": noise,
        "ngf": ngf,
        "nc": nc,
        "num_classes": classes,
        "batchnorm": n_bn > 0,
        "image_size": size,
        "output_size": config.output_size,
        "first_layer_inputs": in0,
    }
    return config, summary


def _variables(
    state: Mapping[str, np.ndarray],
    modules: list[_Module],
    own_keys: list[str],
    config: dcgan.DCGANConfig,
    source: str,
) -> dict[str, Any]:
    table = TensorTable({k: state[k] for k in own_keys}, source)
    values: dict[str, np.ndarray] = {}
    conv_i = -1
    for m in modules:
        if m.kind == "convt":
            conv_i += 1
            values[flax_key("params", f"convt_{conv_i}", "kernel")] = layout.conv_transpose2d(
                _take(table, m.keys["weight"], source)
            )
            continue
        k = m.keys
        affine = layout.norm(_take(table, k["weight"], source), _take(table, k["bias"], source))
        stats = layout.batchnorm_stats(
            _take(table, k["running_mean"], source), _take(table, k["running_var"], source)
        )
        table.ignore(k.get("num_batches_tracked", ""))
        name = f"bn_{conv_i}"
        for leaf, arr in affine.items():
            values[flax_key("params", name, leaf)] = arr
        for leaf, arr in stats.items():
            values[flax_key("batch_stats", name, leaf)] = arr
        if np.any(stats["var"] < 0):
            raise ArchitectureError(f"{source}: {k['running_var']} has negative variances")
    table.finish()
    template = abstract_template(lambda key: dcgan.init_variables(config, key), jax.random.key(0))
    return fill_template(template, values, source)


def _take(table: TensorTable, key: str, source: str) -> np.ndarray:
    """The tensor under ``key`` (present: :func:`_classify` found it), refused if non-finite."""
    tensor = table.take(key)
    assert tensor is not None, key
    return require_finite(tensor, key, source)


def _check_forward(config: dcgan.DCGANConfig, variables: Any, source: str) -> None:
    """Trace the converted generator (no compile, no compute): it must emit the inferred size."""
    gen = dcgan.make_generator(config, variables, name="check")
    z = jnp.zeros((1, config.nz), jnp.float32)
    cond = jnp.zeros((1,), jnp.int32) if config.num_classes else None
    out = jax.eval_shape(gen.apply_fn, variables, z, cond)
    want = (1, config.output_size, config.output_size, config.nc)
    if tuple(out.shape) != want:  # pragma: no cover - guarded by the inference above
        raise ArchitectureError(f"{source}: converted generator emits {out.shape}, expected {want}")
