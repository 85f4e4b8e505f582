"""The grid file: YAML parsed with line numbers, validated, expanded into cells.

Format (docs/sweep.md)::

    slurm: {partition: gpu, time: 60}      # optional defaults for every experiment
    ray: {address: auto}                   # optional: join a running Ray cluster
    experiments:
      - name: alpha-s                      # required, the cells' label
        command: norms inputs              # one of COMMANDS
        model: [tiny-gpt2, minilm]         # the MODEL argument; a list is a grid axis
        dataset: [random, mmlu]            # any option as the CLI spells it, without dashes
        max-tokens: 64
        seeds: [0, 1, 2]                   # the seed axis: --seed 0, --seed 1, --seed 2
        slurm: {gpus_per_node: 1, mem: 16G}
        ray: {num_cpus: 2, num_gpus: 0}

A list value makes a grid axis (cartesian product, in the order the keys are written); an
option that takes several values (``multiple``) gets a list of lists. Every error is one line
``FILE:LINE: problem: fix`` raised as :class:`QftInputError`. Which commands exist and which
options they take come from the caller as :class:`CommandSpec` (the CLI layer reads them from its
Typer app), so this module never imports the CLI.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from qft_cli.system.errors import QftInputError

#: Commands a grid may name (``cost`` once qft has it: a grid naming a command this qft lacks says so).
COMMANDS = ("norms inputs", "norms weights", "norms attention", "train", "finetune", "cost")
#: Options the sweep sets itself on every cell; a grid may not set them.
RESERVED_OPTIONS = ("out", "quiet", "format", "threads", "resume", "help")
#: Keys of an experiment besides the command's options.
EXPERIMENT_KEYS = ("name", "command", "model", "seeds", "slurm", "ray")
#: Top-level keys of a grid file.
TOP_KEYS = ("experiments", "slurm", "ray")
#: SLURM resources (per experiment or top-level defaults) and their YAML types.
SLURM_KEYS = {"partition": str, "account": str, "qos": str, "constraint": str, "gpus_per_node": int,
              "cpus_per_task": int, "mem": str, "time": (int, str), "array_parallelism": int}
#: Ray resources per cell; ``address`` only at the top level.
RAY_KEYS = {"num_cpus": (int, float), "num_gpus": (int, float)}
RAY_TOP_KEYS = {"address": str, **RAY_KEYS}


@dataclass(frozen=True)
class OptionSpec:
    """One option of a qft command: ``name`` as the CLI spells it without dashes (``max-tokens``),
    ``kind`` one of ``int``, ``float``, ``str``, ``path``, ``flag``; ``multiple``: the option may
    be repeated; ``default``: the CLI's default (``None``: unset)."""

    name: str
    kind: str
    default: Any = None
    multiple: bool = False


@dataclass(frozen=True)
class CommandSpec:
    """A qft command: ``name`` (``norms inputs``), its options by name, and its MODEL argument:
    ``model`` is ``"one"`` (finetune's MODEL), ``"many"`` (norms' MODELS...) or ``None`` (train)."""

    name: str
    options: dict[str, OptionSpec]
    model: Optional[str] = None


@dataclass(frozen=True)
class Cell:
    """One qft command line of a grid.

    ``options`` holds the values written in the file for this cell (CLI spelling without dashes,
    paths made absolute); ``models`` the MODEL argument(s); ``slurm``/``ray`` the resources.
    """

    experiment: str
    command: str
    models: tuple[str, ...]
    options: tuple[tuple[str, Any], ...]
    source: str  # FILE:LINE of the experiment
    slurm: tuple[tuple[str, Any], ...] = ()
    ray: tuple[tuple[str, Any], ...] = ()
    model_source: str = ""  # FILE:LINE of the model value

    def option_dict(self) -> dict[str, Any]:
        return dict(self.options)

    def argv(self, spec: CommandSpec) -> list[str]:
        """The qft arguments of this cell (after ``qft``), without the sweep's ``--out``, ``--quiet``
        and ``--threads``."""
        words = self.command.split() + list(self.models)
        for name, value in self.options:
            opt = spec.options[name]
            if opt.kind == "flag":
                if value:
                    words.append(f"--{name}")
                continue
            values = value if opt.multiple and isinstance(value, list) else [value]
            for v in values:
                words += [f"--{name}", str(v)]
        return words

    def label(self) -> str:
        bits = list(self.models) + [f"{k}={v}" for k, v in self.options]
        return f"{self.experiment}: {' '.join(bits)}"


@dataclass
class Grid:
    """A parsed grid file: its path, cells in file order, the top-level ``slurm``/``ray`` settings."""

    path: Path
    cells: list[Cell]
    slurm: dict[str, Any] = field(default_factory=dict)
    ray: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- YAML with lines

def _compose(path: Path, text: str):
    import yaml

    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise QftInputError(f"{path}{line}: not valid YAML ({problem}): fix the file's syntax") from None


def _where(path: Path, node) -> str:
    return f"{path}:{node.start_mark.line + 1}"


def _construct(node) -> Any:
    import yaml

    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def _mapping(path: Path, node, what: str) -> list[tuple[str, Any, Any]]:
    """``(key, key node, value node)`` of a mapping node, refusing duplicates and non-string keys."""
    import yaml

    if not isinstance(node, yaml.MappingNode):
        raise QftInputError(f"{_where(path, node)}: {what} must be a mapping (key: value lines)")
    out, seen = [], set()
    for key_node, value_node in node.value:
        key = _construct(key_node)
        if not isinstance(key, str):
            raise QftInputError(f"{_where(path, key_node)}: key {key!r} in {what} is not a name: write it as text")
        if key in seen:
            raise QftInputError(f"{_where(path, key_node)}: key {key!r} appears twice in {what}: keep one")
        seen.add(key)
        out.append((key, key_node, value_node))
    return out


def _unknown(path: Path, key_node, key: str, known, what: str) -> QftInputError:
    import difflib

    near = difflib.get_close_matches(key, list(known), n=1)
    hint = f"did you mean {near[0]!r}?" if near else f"known: {', '.join(sorted(known))}"
    return QftInputError(f"{_where(path, key_node)}: unknown key {key!r} in {what}: {hint}")


def _type_name(kinds) -> str:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    names = {int: "an integer", float: "a number", str: "text", bool: "true or false"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _resources(path: Path, node, keys: dict[str, Any], what: str) -> dict[str, Any]:
    out = {}
    for key, key_node, value_node in _mapping(path, node, what):
        if key not in keys:
            raise _unknown(path, key_node, key, keys, what)
        value = _construct(value_node)
        kinds = keys[key] if isinstance(keys[key], tuple) else (keys[key],)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise QftInputError(f"{_where(path, value_node)}: {what} {key} must be {_type_name(keys[key])} "
                                f"(got {value!r})")
        out[key] = value
    return out


def _option_value(path: Path, node, value: Any, opt: OptionSpec, base: Path) -> Any:
    """Check one value of option ``opt`` (a scalar, or a list for ``multiple`` options)."""
    if opt.multiple and isinstance(value, list):
        return [_option_value(path, node, v, OptionSpec(opt.name, opt.kind), base) for v in value]
    where = _where(path, node)
    if opt.kind == "flag":
        if not isinstance(value, bool):
            raise QftInputError(f"{where}: {opt.name} is an on/off flag: write true or false (got {value!r})")
        return value
    if value is None or isinstance(value, (bool, list, dict)):
        raise QftInputError(f"{where}: {opt.name} must be {_KIND_TEXT[opt.kind]} (got {value!r})")
    if opt.kind == "int":
        if not isinstance(value, int):
            raise QftInputError(f"{where}: {opt.name} must be an integer (got {value!r})")
        return value
    if opt.kind == "float":
        if not isinstance(value, (int, float)):
            raise QftInputError(f"{where}: {opt.name} must be a number (got {value!r})")
        return float(value)
    text = str(value)
    if opt.kind == "path":
        return str((base / Path(text).expanduser()).absolute()) if not Path(text).expanduser().is_absolute() \
            else str(Path(text).expanduser())
    return text


_KIND_TEXT = {"int": "an integer", "float": "a number", "str": "text", "path": "a path", "flag": "true or false"}


def _axis(path: Path, node, check) -> list[tuple[Any, Any]]:
    """``[(value, node)]``: a list node is an axis, anything else one value."""
    import yaml

    if isinstance(node, yaml.SequenceNode):
        if not node.value:
            raise QftInputError(f"{_where(path, node)}: an empty list makes no cells: give at least one value")
        return [(check(item, _construct(item)), item) for item in node.value]
    return [(check(node, _construct(node)), node)]


def _local_path(text: str, base: Path) -> Optional[str]:
    """``text`` as an absolute path when it names an existing file or directory (relative to ``base``)."""
    p = Path(text).expanduser()
    p = p if p.is_absolute() else base / p
    return str(p.absolute()) if p.exists() else None


def load_grid(path: Path | str, specs: dict[str, CommandSpec], text: Optional[str] = None,
              base: Optional[Path] = None) -> Grid:
    """Parse and validate a grid file and expand it into cells.

    Args:
        path: the YAML file (named in every error; read unless ``text`` is given).
        specs: the commands this qft has (``name -> CommandSpec``); a command of :data:`COMMANDS`
            missing here is refused as not installed in this qft.
        text: the file's text (presets pass it).
        base: the directory relative paths are resolved against (default: the current directory,
            as the CLI would read them).

    Returns:
        The :class:`Grid`; cells are in file order, axes expanded as a cartesian product in the
        order the keys are written.

    Raises:
        QftInputError: unreadable file, invalid YAML, unknown key, wrong type, unknown command,
            a reserved option (``out``, ``threads``, ...) or a grid without cells; one line
            ``FILE:LINE: problem: fix``.
    """
    import yaml

    path = Path(path)
    base = Path.cwd() if base is None else Path(base)
    if text is None:
        try:
            text = path.read_text()
        except OSError as err:
            raise QftInputError(f"{path}: the grid file could not be read ({err.strerror}): pass a YAML grid file "
                                "(qft sweep presets lists the shipped ones)") from None
    root = _compose(path, text)
    if root is None:
        raise QftInputError(f"{path}:1: the grid file is empty: give an experiments: list (docs/sweep.md)")
    top = {key: (key_node, value_node) for key, key_node, value_node in _mapping(path, root, "the grid file")}
    for key, (key_node, _) in top.items():
        if key not in TOP_KEYS:
            raise _unknown(path, key_node, key, TOP_KEYS, "the grid file")
    if "experiments" not in top:
        raise QftInputError(f"{path}:1: no experiments: list: add one (docs/sweep.md)")
    slurm_top = _resources(path, top["slurm"][1], SLURM_KEYS, "slurm") if "slurm" in top else {}
    ray_top = _resources(path, top["ray"][1], RAY_TOP_KEYS, "ray") if "ray" in top else {}
    exp_list = top["experiments"][1]
    if not isinstance(exp_list, yaml.SequenceNode) or not exp_list.value:
        raise QftInputError(f"{_where(path, exp_list)}: experiments must be a non-empty list (- name: ... lines)")
    cells: list[Cell] = []
    names = set()
    for exp_node in exp_list.value:
        cells += _expand(path, exp_node, specs, base, slurm_top, {k: v for k, v in ray_top.items() if k != "address"},
                         names)
    return Grid(path=path, cells=cells, slurm=slurm_top, ray=ray_top)


def _expand(path: Path, node, specs, base, slurm_top, ray_top, names) -> list[Cell]:
    entries = _mapping(path, node, "an experiment")
    by_key = {k: (kn, vn) for k, kn, vn in entries}
    where = _where(path, node)
    for required in ("name", "command"):
        if required not in by_key:
            raise QftInputError(f"{where}: the experiment has no {required}: key: add one")
    name = _construct(by_key["name"][1])
    if not isinstance(name, (str, int)) or isinstance(name, bool):
        raise QftInputError(f"{_where(path, by_key['name'][1])}: name must be text (got {name!r})")
    name = str(name)
    if name in names:
        raise QftInputError(f"{_where(path, by_key['name'][1])}: experiment name {name!r} is used twice: rename one")
    names.add(name)
    command_node = by_key["command"][1]
    command = _construct(command_node)
    command = " ".join(str(command).split()) if isinstance(command, str) else command
    if command not in COMMANDS:
        import difflib

        near = difflib.get_close_matches(str(command), COMMANDS, n=1)
        hint = f"did you mean {near[0]!r}?" if near else f"one of: {', '.join(COMMANDS)}"
        raise QftInputError(f"{_where(path, command_node)}: unknown command {command!r}: {hint}")
    if command not in specs:
        raise QftInputError(f"{_where(path, command_node)}: this qft has no `qft {command}` command: "
                            "update qft or remove the experiment")
    spec = specs[command]
    axes: list[tuple[str, list[Any]]] = []
    slurm, ray = dict(slurm_top), dict(ray_top)
    models_axis: list[Any] = [((), where)]
    for key, key_node, value_node in entries:
        if key in ("name", "command"):
            continue
        if key == "slurm":
            slurm.update(_resources(path, value_node, SLURM_KEYS, "slurm"))
            continue
        if key == "ray":
            ray.update(_resources(path, value_node, RAY_KEYS, "ray"))
            continue
        if key == "model":
            if spec.model is None:
                raise QftInputError(f"{_where(path, key_node)}: `qft {command}` takes no MODEL: remove model:")

            def check_model(n, v):
                if not isinstance(v, (str, int)) or isinstance(v, bool):
                    raise QftInputError(f"{_where(path, n)}: model must be a model name or path (got {v!r})")
                return _local_path(str(v), base) or str(v)

            models_axis = [((m,), _where(path, n)) for m, n in _axis(path, value_node, check_model)]
            continue
        if key == "seeds":
            if "seed" not in spec.options:
                raise QftInputError(f"{_where(path, key_node)}: `qft {command}` has no --seed: remove seeds:")
            if "seed" in by_key:
                raise QftInputError(f"{_where(path, key_node)}: both seed: and seeds: given: keep one")
            value = _construct(value_node)
            if isinstance(value, str) and "seeds" in spec.options:  # the command's own --seeds 0,1,2: one run
                axes.append(("seeds", [value]))
                continue
            opt = spec.options["seed"]
            axes.append(("seed", [v for v, _ in _axis(path, value_node,
                                                      lambda n, v: _option_value(path, n, v, opt, base))]))
            continue
        if key.replace("_", "-") in RESERVED_OPTIONS or key in RESERVED_OPTIONS:
            raise QftInputError(f"{_where(path, key_node)}: {key} is set by qft sweep itself (run dirs go under the "
                                "sweep directory, threads are split between workers): remove it")
        if key not in spec.options:
            known = [k for k in spec.options if k not in RESERVED_OPTIONS] + list(EXPERIMENT_KEYS)
            raise _unknown(path, key_node, key, known, f"`qft {command}` options")
        opt = spec.options[key]

        def check(n, v, opt=opt):
            value = _option_value(path, n, v, opt, base)
            if opt.kind == "str" and isinstance(value, str):  # a data file named by a str option (--dataset x.txt)
                return _local_path(value, base) or value
            return value

        if opt.multiple:  # a list is the value; a list of lists is an axis
            import yaml

            if isinstance(value_node, yaml.SequenceNode) and value_node.value and \
                    all(isinstance(v, yaml.SequenceNode) for v in value_node.value):
                axes.append((key, [check(n, _construct(n)) for n in value_node.value]))
            else:
                axes.append((key, [check(value_node, _construct(value_node))]))
            continue
        axes.append((key, [v for v, _ in _axis(path, value_node, check)]))
    if spec.model is not None and models_axis == [((), where)]:
        raise QftInputError(f"{where}: `qft {command}` needs a MODEL: add model: NAME (or a list of names)")
    cells = []
    for models, model_where in models_axis:
        for values in itertools.product(*[vals for _, vals in axes]):
            options = tuple((k, v) for (k, _), v in zip(axes, values))
            cells.append(Cell(experiment=name, command=command, models=tuple(models), options=options, source=where,
                              slurm=tuple(sorted(slurm.items())), ray=tuple(sorted(ray.items())),
                              model_source=model_where))
    return cells
