"""Device mesh, batch sharding and big_vision-style regex sharding rules for the train state.

Mesh: `config.mesh` maps axis names to sizes, e.g. `{"data": -1, "fsdp": 1}`; -1 takes the remaining devices. Axes
are laid out in the canonical order `data, fsdp, seq, model` (then any other names, sorted): ConfigDict sorts its keys,
so the mapping's own order cannot be trusted, and the data axis is kept outermost (it is the one that may span hosts).
All axes are `AxisType.Auto` so that `with_sharding_constraint` and GSPMD propagation work.

The `seq` axis is sequence parallelism (docs/sharding.md): one image's tokens are split over it between the
embedding and the head (`pixeltok.ops.seq_parallel`; the models switch to it when the ambient mesh of
`jax.set_mesh` has seq > 1). It comes after data and fsdp in the device order, so each seq group is a run of
adjacent devices (one host / one fast-interconnect island): its collectives (ppermutes of halos and reversals,
all-gathers of shard states or keys/values) happen every block, the data/fsdp ones once per step.

Batches: the leading dim is split over every data-parallel axis present, `P(("data", "fsdp"))` — FSDP is data
parallelism whose parameters are sharded too. Batches are replicated over `seq` (every shard of an image sees the
image; the patch embedding keeps only its own tokens' work after the partitioner splits it). Parameters follow the
rules below whatever the seq size (replicated over seq unless a rule names it).

Parameters and optimizer state (`state_shardings`): a list of `(regex, rule)`; for each leaf the first regex that
`re.search`es its '/'-joined path wins. Paths are the pytree keys with the trailing nnx `.value` dropped, e.g.
`0/blocks/3/mixer/in_proj/kernel` or `1/opt_state/0/mu/pos_embed` for `nnx.state((model, opt))`; anchor with `^`/`$`
when a substring match is too loose. Rules:

  replicate              every device holds the whole leaf.
  fsdp                   shard the largest dim divisible by the `fsdp` axis size over `fsdp` (ties: the earlier dim),
  fsdp(MIN)              only when the leaf has >= MIN elements (default 2**12); otherwise, or when no dim divides,
  fsdp(AXIS, MIN)        or when the axis is absent or of size 1, replicate (big_vision's `fsdp` rule).
  shard_dim(AXIS, DIM)   split dim DIM (negative counts from the end) over mesh axis AXIS; ValueError if it does not
                         divide. Leaves with fewer dims than DIM needs (scalars, step counters) are replicated.

Config string syntax (`config.sharding_rules`): `regex=rule;regex=rule`, split on `;`, each entry split on its LAST
`=` (rules never contain `=`), e.g. `pos_embed$=replicate;.*=fsdp(1024)`. Python: a list of `(regex, rule)` where rule
is such a string or a tuple like `("shard_dim", "fsdp", 0)`. An empty string/list gives the default `[(".*", "fsdp")]`
(with fsdp=1 that is replication everywhere). A leaf that no rule matches is replicated.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

CANONICAL_AXES = ("data", "fsdp", "seq", "model")
BATCH_AXES = ("data", "fsdp")
DEFAULT_MIN_SIZE = 2**12
DEFAULT_RULES = ((".*", "fsdp"),)


# ------------------------------------------------------------------------------------------------------------ mesh
def _ordered_axes(mesh_cfg: Mapping[str, int]) -> list[tuple[str, int]]:
    """(name, size) pairs in canonical order: known axes first, then the rest sorted by name."""
    items = dict(mesh_cfg.items())
    known = [(n, int(items[n])) for n in CANONICAL_AXES if n in items]
    rest = [(n, int(items[n])) for n in sorted(items) if n not in CANONICAL_AXES]
    return known + rest


def mesh_shape(mesh_cfg: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Resolves -1 in `mesh_cfg` against `num_devices`; returns {axis: size} in mesh order.

    Raises:
      ValueError: a size that is 0 or < -1, more than one -1, or sizes that do not multiply to `num_devices`.
    """
    axes = _ordered_axes(mesh_cfg)
    if not axes:
        raise ValueError(f"mesh config {dict(mesh_cfg)} has no axes; e.g. {{'data': -1}}")
    bad = [f"{n}={s}" for n, s in axes if s == 0 or s < -1]
    fill = [n for n, s in axes if s == -1]
    if bad or len(fill) > 1:
        raise ValueError(f"mesh sizes {dict(axes)} invalid: sizes must be >= 1 with at most one -1 (got {bad or fill})")
    fixed = math.prod(s for _, s in axes if s != -1)
    if fill:
        if num_devices % fixed:
            raise ValueError(f"mesh sizes {dict(axes)}: fixed axes multiply to {fixed}, which does not divide "
                             f"the {num_devices} devices")
        axes = [(n, num_devices // fixed if s == -1 else s) for n, s in axes]
    elif fixed != num_devices:
        raise ValueError(f"mesh sizes {dict(axes)} multiply to {fixed}, but there are {num_devices} devices")
    return dict(axes)


def make_mesh(mesh_cfg: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
    """Builds a mesh with `AxisType.Auto` axes from {axis: size} (-1 = the remaining devices).

    Args:
      mesh_cfg: e.g. `{"data": -1, "fsdp": 2}` or the config's `mesh` ConfigDict.
      devices: the devices to use (default: all of `jax.devices()`, over every process).

    Raises:
      ValueError: naming the sizes and the device count when they do not fit.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_cfg, len(devices))
    names = tuple(shape)
    return jax.make_mesh(tuple(shape.values()), names, axis_types=(AxisType.Auto,) * len(names), devices=devices)


def axis_size(mesh: Mesh | jax.sharding.AbstractMesh | None, name: str) -> int:
    """Size of mesh axis `name` (1 when absent or there is no mesh)."""
    if mesh is None or getattr(mesh, "empty", False) or name not in mesh.axis_names:
        return 1
    return int(mesh.shape[name])


def describe_mesh(mesh: Mesh) -> dict[str, int]:
    """{axis: size} of a mesh, for config.json and logs."""
    return {str(n): int(s) for n, s in mesh.shape.items()}


# ----------------------------------------------------------------------------------------------------------- batch
def batch_axes(mesh: Mesh | jax.sharding.AbstractMesh) -> tuple[str, ...]:
    """The data-parallel axes of `mesh` that the batch dim is split over (subset of ("data", "fsdp"))."""
    return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def batch_spec(mesh: Mesh | jax.sharding.AbstractMesh) -> P:
    """PartitionSpec for (batch, ...) arrays: the leading dim over ("data", "fsdp") (those present), rest replicated."""
    axes = batch_axes(mesh)
    return P(axes) if axes else P()


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """NamedSharding of `batch_spec(mesh)`; pass to `jax.make_array_from_process_local_data`."""
    return NamedSharding(mesh, batch_spec(mesh))


def constrain_batch(x: jax.Array, mesh: Mesh | None = None) -> jax.Array:
    """Constrains activations x: (batch, ...) to be split over the batch axes.

    Uses `mesh` or else the mesh set with `jax.set_mesh`; a no-op when there is none, when the batch axes are all of
    size 1, or when the batch does not divide their product (e.g. a ragged eval batch: nothing to shard evenly).
    """
    if mesh is None:
        mesh = jax.sharding.get_abstract_mesh()
        if mesh is None or mesh.empty:
            return x
    axes = batch_axes(mesh)
    n = math.prod(mesh.shape[a] for a in axes)
    if n == 1 or np.ndim(x) == 0 or x.shape[0] % n:
        return x
    spec = P(axes)
    target = NamedSharding(mesh, spec) if isinstance(mesh, Mesh) else spec
    return jax.lax.with_sharding_constraint(x, target)


# ----------------------------------------------------------------------------------------------------------- rules
@dataclasses.dataclass(frozen=True)
class Rule:
    """A parsed sharding rule: kind in {"replicate", "fsdp", "shard_dim"} and its arguments."""
    kind: str
    axis: str = "fsdp"
    min_size: int = DEFAULT_MIN_SIZE
    dim: int = 0


_RULE_RE = re.compile(r"^\s*(\w+)\s*(?:\((.*)\))?\s*$")


def parse_rule(rule: str | Sequence[Any] | Rule) -> Rule:
    """Parses `replicate`, `fsdp`, `fsdp(MIN)`, `fsdp(AXIS, MIN)`, `shard_dim(AXIS, DIM)` (string or tuple form)."""
    if isinstance(rule, Rule):
        return rule
    if isinstance(rule, str):
        m = _RULE_RE.match(rule)
        if not m:
            raise ValueError(f"sharding rule {rule!r} unparsable; valid: replicate, fsdp, fsdp(MIN), "
                             "fsdp(AXIS, MIN), shard_dim(AXIS, DIM)")
        kind, args = m.group(1), [a.strip().strip("'\"") for a in (m.group(2) or "").split(",") if a.strip()]
    else:
        kind, args = str(rule[0]), list(rule[1:])
    try:
        if kind == "replicate" and not args:
            return Rule("replicate")
        if kind == "fsdp" and len(args) <= 2:
            if len(args) == 2:
                return Rule("fsdp", axis=str(args[0]), min_size=int(args[1]))
            if len(args) == 1 and not str(args[0]).lstrip("-").isdigit():
                return Rule("fsdp", axis=str(args[0]))
            return Rule("fsdp", min_size=int(args[0]) if args else DEFAULT_MIN_SIZE)
        if kind == "shard_dim" and len(args) == 2:
            return Rule("shard_dim", axis=str(args[0]), dim=int(args[1]))
    except (TypeError, ValueError):
        pass
    raise ValueError(f"sharding rule {rule!r} invalid; valid: replicate, fsdp, fsdp(MIN), fsdp(AXIS, MIN), "
                     "shard_dim(AXIS, DIM)")


def parse_rules(rules: str | Sequence[tuple[str, Any]] | None) -> list[tuple[re.Pattern, Rule]]:
    """Parses rules from the config string `regex=rule;regex=rule` or a list of (regex, rule); empty → default."""
    if rules is None or (isinstance(rules, str) and not rules.strip()) or (not isinstance(rules, str) and
                                                                          len(rules) == 0):
        rules = DEFAULT_RULES
    if isinstance(rules, str):
        pairs = []
        for entry in (e.strip() for e in rules.split(";")):
            if not entry:
                continue
            if "=" not in entry:
                raise ValueError(f"sharding rule entry {entry!r} has no '='; syntax: regex=rule;regex=rule")
            regex, rule = entry.rsplit("=", 1)
            pairs.append((regex.strip(), rule.strip()))
        rules = pairs
    out = []
    for regex, rule in rules:
        try:
            pattern = re.compile(regex)
        except re.error as e:
            raise ValueError(f"sharding rule regex {regex!r} invalid: {e}") from None
        out.append((pattern, parse_rule(rule)))
    return out


def rules_from_config(config: Any) -> list[tuple[re.Pattern, Rule]]:
    """Parsed `config.sharding_rules` (missing or "" → the default rules)."""
    return parse_rules(getattr(config, "sharding_rules", "") or None)


def spec_for(path: str, shape: Sequence[int], mesh: Mesh | jax.sharding.AbstractMesh,
             rules: Sequence[tuple[re.Pattern, Rule]]) -> P:
    """PartitionSpec of one leaf of `shape` named `path` under parsed `rules` (first match wins)."""
    for pattern, rule in rules:
        if pattern.search(path):
            return _apply_rule(rule, path, tuple(shape), mesh)
    return P()


def _apply_rule(rule: Rule, path: str, shape: tuple[int, ...], mesh) -> P:
    if rule.kind == "replicate" or not shape:
        return P()
    sizes = dict(mesh.shape)
    if rule.kind == "fsdp":
        n = sizes.get(rule.axis, 1)
        if n == 1 or math.prod(shape) < rule.min_size:
            return P()
        # Largest dim first (stable sort keeps the earlier dim on ties), as big_vision's fsdp rule does.
        for d in sorted(range(len(shape)), key=lambda i: -shape[i]):
            if shape[d] % n == 0:
                return P(*[rule.axis if i == d else None for i in range(len(shape))])
        return P()
    # shard_dim
    if rule.axis not in sizes:
        raise ValueError(f"sharding rule shard_dim({rule.axis}, {rule.dim}) for {path}: axis {rule.axis!r} not in "
                         f"mesh axes {tuple(sizes)}")
    dim = rule.dim + len(shape) if rule.dim < 0 else rule.dim
    if not 0 <= dim < len(shape):
        return P()
    if shape[dim] % sizes[rule.axis]:
        raise ValueError(f"sharding rule shard_dim({rule.axis}, {rule.dim}) for {path}: dim size {shape[dim]} not "
                         f"divisible by mesh axis size {sizes[rule.axis]}")
    return P(*[rule.axis if i == dim else None for i in range(len(shape))])


# ----------------------------------------------------------------------------------------------------------- state
def _key_name(k: Any) -> str | None:
    if isinstance(k, jax.tree_util.DictKey):
        return str(k.key)
    if isinstance(k, jax.tree_util.SequenceKey):
        return str(k.idx)
    if isinstance(k, jax.tree_util.GetAttrKey):
        # nnx Variables flatten to their array under `.value` (older flax: `.raw_value`): not part of the name.
        return None if k.name in ("value", "raw_value") else k.name
    if isinstance(k, jax.tree_util.FlattenedIndexKey):
        return str(k.key)
    return str(k)


def path_name(path: Sequence[Any]) -> str:
    """'/'-joined key names of a pytree path, nnx `.value` dropped: `0/blocks/3/mixer/in_proj/kernel`."""
    return "/".join(n for n in map(_key_name, path) if n is not None)


def state_specs(abstract_state: Any, mesh: Mesh | jax.sharding.AbstractMesh, rules=None) -> Any:
    """Like `state_shardings` but returns PartitionSpecs."""
    parsed = parse_rules(rules) if not _is_parsed(rules) else rules
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: spec_for(path_name(path), np.shape(leaf), mesh, parsed), abstract_state)


def state_shardings(abstract_state: Any, mesh: Mesh, rules=None) -> Any:
    """NamedShardings for every leaf of a train state, same pytree structure as `abstract_state`.

    Args:
      abstract_state: an nnx.State (e.g. `nnx.state((model, opt))` or the state half of `nnx.split`, concrete or
        from `nnx.eval_shape`) or any pytree whose leaves are arrays / ShapeDtypeStructs (scalars allowed). nnx
        Variables stay Variables whose value is a NamedSharding, as `nnx.get_named_sharding` returns, so the result
        fits `jax.jit(out_shardings=...)`, `jax.device_put(state, shardings)` and Orbax restore targets.
      mesh: from `make_mesh`.
      rules: None/"" (default `[(".*", "fsdp")]`), a config string `regex=rule;...`, or a list of (regex, rule).

    Returns:
      The pytree of `NamedSharding(mesh, spec)`.
    """
    specs = state_specs(abstract_state, mesh, rules)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def _is_parsed(rules) -> bool:
    return (isinstance(rules, list) and bool(rules) and
            all(isinstance(p, re.Pattern) and isinstance(r, Rule) for p, r in rules))


def check_batch_split(mesh: Mesh, train_sizes: Mapping[str, int], **other_sizes: int) -> None:
    """Raises ValueError unless every global batch size splits evenly over the data-parallel devices of `mesh`
    and over the processes (each process feeds its own slice)."""
    shards = math.prod(mesh.shape[a] for a in batch_axes(mesh))
    nproc = jax.process_count()
    for key, size in {**train_sizes, **other_sizes}.items():
        if size % shards:
            raise ValueError(f"{key}={size} is not divisible by the {shards} data-parallel devices of mesh "
                             f"{describe_mesh(mesh)}; use a multiple of {shards}")
        if size % nproc:
            raise ValueError(f"{key}={size} is not divisible by the {nproc} processes; use a multiple of {nproc}")
