"""Typed component registries (fairseq/MMF style) with lazy built-ins and entry-point plugins.

Every kind of component (backbones, task plugins, heads, tokenizers, datasets, metrics) has one *root*
:class:`Registry` here. A component is registered once, optionally with a dataclass config
(``@BACKBONES.register("beit3_base", config=Beit3BaseConfig)``), and built from a name, a dict, a config
dataclass instance or an OmegaConf node. Framework adapters (fairseq, detectron2, mmseg) build through
these registries and only translate.

The layering follows mmengine's root/child registries (``mmengine/registry/registry.py``): the roots know
no layer above the core. Their ``locations`` name core modules only (the sentencepiece tokenizer, the
datasets). Each layer declares its own *child* registries with ``parent=`` the root, a ``scope`` and its
own ``locations`` (``beit3_plugins.backbones.registry``, ``beit3_plugins.vl_tasks.registry``,
``beit3_plugins.pretraining.registry``). The roots discover children without naming them: the package
lists its layers under the setuptools entry-point group ``beit3_plugins``, the same mechanism a
third-party plugin uses, and a lookup that misses imports those entry points. A root lookup searches its
own entries, then every child (importing the child's ``locations`` on first need); a child lookup
searches its own entries, then its parent. ``"scope.name"`` picks one child explicitly. This module
imports neither torch nor any framework.

Registries of plain data (the zoo's entries, the CLI's commands) use the same type: a location written
``"module:ATTR"`` names a sequence of entries (objects with a ``name``) that the registry adds itself on first
lookup, so a module that lists entries registers nothing when imported; third parties list theirs under the
registry's own entry-point group (``entry_point_group``: each entry point is one entry or a sequence of them).
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.metadata
import logging
import typing
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Type

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "beit3_plugins"

__all__ = [
    "Registry", "RegistryEntry", "UnknownComponentError", "DuplicateComponentError", "ENTRY_POINT_GROUP",
    "BACKBONES", "TASKS", "HEADS", "TOKENIZERS", "DATASETS", "METRICS", "load_entry_point_plugins",
    "config_from_dict",
]


class UnknownComponentError(KeyError):
    """Raised for a name no registry entry has; the message lists what exists and close matches."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0])


class DuplicateComponentError(ValueError):
    """Raised when a name is registered twice in the same registry."""


@dataclasses.dataclass(frozen=True)
class RegistryEntry:
    name: str
    obj: Any
    config: Optional[Type] = None
    source: str = ""


_loaded_entry_points: Dict[str, str] = {}
_entry_point_errors: Dict[str, str] = {}


def load_entry_point_plugins(group: str = ENTRY_POINT_GROUP) -> Dict[str, str]:
    """Import every module declared under ``group`` once; return {entry point name: module}.

    A plugin that fails to import is reported (logged and remembered for error messages) rather than
    taking the whole registry down.
    """
    for ep in importlib.metadata.entry_points(group=group):
        if ep.name in _loaded_entry_points or ep.name in _entry_point_errors:
            continue
        try:
            loaded = ep.load()
            if callable(loaded) and not isinstance(loaded, type(importlib)):
                loaded()
            _loaded_entry_points[ep.name] = ep.value
        except Exception as exc:  # noqa: BLE001 - a broken third-party plugin must not hide the rest
            _entry_point_errors[ep.name] = f"{ep.value}: {type(exc).__name__}: {exc}"
            logger.warning("beit3_plugins entry point %r failed to load: %s", ep.name, exc)
    return dict(_loaded_entry_points)


def _resolve(dotted: str) -> Any:
    module, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def config_from_dict(config_type: Type, values: Mapping[str, Any]) -> Any:
    """Build a (possibly nested) dataclass from a mapping, refusing unknown keys with a clear error."""
    if dataclasses.is_dataclass(values) and not isinstance(values, type):
        if isinstance(values, config_type):
            return values
        values = dataclasses.asdict(values)
    field_map = {f.name: f for f in dataclasses.fields(config_type)}
    unknown = sorted(set(values) - set(field_map))
    if unknown:
        raise TypeError(
            f"{config_type.__name__} has no field(s) {unknown}; fields are {sorted(field_map)}"
        )
    try:
        hints = typing.get_type_hints(config_type)
    except Exception:  # noqa: BLE001 - unresolvable forward refs: fall back to no nesting
        hints = {}
    kwargs = {}
    for key, value in values.items():
        hint = hints.get(key)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            value = config_from_dict(hint, value)
        elif isinstance(value, list) and (hint is tuple or typing.get_origin(hint) is tuple):
            value = tuple(value)
        kwargs[key] = value
    return config_type(**kwargs)


def _to_plain(spec: Any) -> Any:
    """OmegaConf nodes become plain containers; other values pass through untouched."""
    module = type(spec).__module__
    if module.startswith("omegaconf"):
        from omegaconf import OmegaConf  # only reached when the caller already uses OmegaConf

        return OmegaConf.to_container(spec, resolve=True)
    return spec


class Registry:
    """Name -> component map for one kind of component.

    Args:
        kind: what is registered ("backbone", "task", ...), used in messages.
        base: class (or dotted path to one, resolved lazily) every built object must be an instance of;
            a child inherits its parent's base when it names none.
        locations: modules imported on first lookup so built-ins register without eager imports. A root
            names core modules only; a child names modules of its own layer.
        parent: the root registry a layer's child registry hangs under (``None`` for a root).
        scope: the child's name, used in messages and in ``"scope.name"`` lookups (e.g. ``"vl_tasks"``).
        entry_type: for a registry of data (zoo entries, commands): the type every entry must be.
        entry_point_group: an entry-point group whose entry points are this registry's entries (one object,
            or a sequence of objects with a ``name``); ``entry_point_loader`` turns an entry point into that
            value (default ``ep.load()``; the CLI keeps the ``module:function`` string unimported).
        code_plugins: whether a miss also imports the ``beit3_plugins`` group (the code plugins that
            register components with decorators); data registries that plugins fill through their own group
            leave it off, so listing the zoo imports no layer.
    """

    def __init__(self, kind: str, base: Any = None, locations: Iterable[str] = (),
                 parent: Optional["Registry"] = None, scope: Optional[str] = None, *,
                 entry_type: Optional[type] = None, entry_point_group: Optional[str] = None,
                 entry_point_loader: Optional[Callable[[Any], Any]] = None, code_plugins: bool = True) -> None:
        if parent is not None and not scope:
            raise ValueError(f"a child {kind} registry needs a scope (the layer that declares it)")
        if parent is not None and scope in parent._children:
            raise DuplicateComponentError(
                f"{kind} registry scope {scope!r} is already a child of the root {parent.kind} registry")
        self.kind = kind
        self._base = base if base is not None or parent is None else parent._base
        self._locations = list(locations)
        self._locations_imported = False
        self._entries: Dict[str, RegistryEntry] = {}
        self.parent = parent
        self.scope = scope
        self._children: Dict[str, Registry] = {}
        self.entry_type = entry_type
        self.entry_point_group = entry_point_group
        self._entry_point_loader = entry_point_loader or (lambda ep: ep.load())
        self._entry_points_loaded = False
        self.code_plugins = code_plugins
        if parent is not None:
            parent._children[scope] = self

    # ------------------------------------------------------------------ tree
    @property
    def root(self) -> "Registry":
        node = self
        while node.parent is not None:
            node = node.parent
        return node

    @property
    def children(self) -> Dict[str, "Registry"]:
        return dict(self._children)

    def _descendants(self) -> List["Registry"]:
        found: List[Registry] = []
        for child in self._children.values():
            found.append(child)
            found.extend(child._descendants())
        return found

    def _where(self) -> str:
        return f"{self.kind} registry" + (f" {self.scope!r}" if self.scope else " (root)")

    # ------------------------------------------------------------------ registration
    @property
    def base(self) -> Optional[type]:
        if isinstance(self._base, str):
            self._base = _resolve(self._base)
        return self._base

    def register(self, name: str, config: Optional[Type] = None, *, force: bool = False
                 ) -> Callable[[Any], Any]:
        """Decorator registering a class or factory function under ``name``.

        With ``config`` (a dataclass type), building calls ``obj(config_instance)``; without it,
        ``obj(**kwargs)``. A name must be unique in the whole tree of the root (among the registries
        loaded so far), so a root lookup is never ambiguous.
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind} names must be non-empty strings, got {name!r}")
        if config is not None and not (isinstance(config, type) and dataclasses.is_dataclass(config)):
            raise TypeError(f"config for {self.kind} {name!r} must be a dataclass type, got {config!r}")

        def decorator(obj: Any) -> Any:
            if isinstance(obj, type) and self.base is not None and not issubclass(obj, self.base):
                raise TypeError(
                    f"cannot register {obj.__qualname__} as {self.kind} {name!r}: "
                    f"it must subclass {self.base.__module__}.{self.base.__qualname__}"
                )
            if not callable(obj):
                raise TypeError(f"{self.kind} {name!r} must be a class or callable, got {obj!r}")
            source = f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
            self._entries[name] = RegistryEntry(name=name, obj=obj, config=config,
                                                source=self._check_new(name, obj, source, force))
            return obj

        return decorator

    def _check_new(self, name: str, obj: Any, source: str, force: bool) -> str:
        """``source`` when ``name`` may be (re)bound to ``obj``: unique in the root's tree unless forced;
        the same object (or an equal data entry) registered again is not a conflict."""
        if not force:
            root = self.root
            for reg in [root, *root._descendants()]:
                existing = reg._entries.get(name)
                if existing is not None and not (existing.obj is obj or (self.entry_type and existing.obj == obj)):
                    raise DuplicateComponentError(
                        f"{self.kind} {name!r} is already registered by {existing.source} in the "
                        f"{reg._where()}; refusing to replace it with {source} (pass force=True to override)"
                    )
        return source

    def add(self, obj: Any, name: Optional[str] = None, *, force: bool = False, source: str = "") -> Any:
        """Register a data entry (an ``entry_type`` instance) under ``name`` (default ``obj.name``)."""
        if self.entry_type is not None and not isinstance(obj, self.entry_type):
            raise TypeError(f"a {self.kind} entry must be a {self.entry_type.__name__}, got {type(obj).__name__}")
        name = name if name is not None else getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind} names must be non-empty strings, got {name!r}")
        self._entries[name] = RegistryEntry(name=name, obj=obj, source=self._check_new(name, obj, source, force))
        return obj

    def _add_all(self, value: Any, name: str, source: str) -> None:
        """One entry (under ``name``) or a sequence of named entries, from a location or an entry point."""
        if isinstance(value, (list, tuple)):
            for item in value:
                self.add(item, source=source)
        else:
            self.add(value, name or None, source=source)

    def items(self) -> List[Tuple[str, Any]]:
        """(name, object) of every entry in this registry and its children (after discovery)."""
        self._discover()
        return [(reg_name, reg._entries[reg_name].obj) for reg in [self, *self._descendants()]
                for reg_name in sorted(reg._entries)]

    # ------------------------------------------------------------------ lookup
    def _import_locations(self) -> None:
        if self._locations_imported:
            return
        self._locations_imported = True
        for location in self._locations:
            module, _, attr = location.partition(":")
            imported = importlib.import_module(module)
            if attr:
                self._add_all(getattr(imported, attr), "", source=location)

    def _load_own_entry_points(self) -> None:
        if self._entry_points_loaded or self.entry_point_group is None:
            return
        self._entry_points_loaded = True
        for ep in importlib.metadata.entry_points(group=self.entry_point_group):
            try:
                self._add_all(self._entry_point_loader(ep), ep.name, source=f"{ep.value} (entry point)")
            except (DuplicateComponentError, TypeError):
                raise
            except Exception as exc:  # noqa: BLE001 - a broken third-party plugin must not hide the rest
                _entry_point_errors[f"{self.entry_point_group}:{ep.name}"] = f"{ep.value}: {type(exc).__name__}: {exc}"
                logger.warning("%s entry point %r failed to load: %s", self.entry_point_group, ep.name, exc)

    def _discover(self) -> None:
        """Import everything that can register here: own locations, entry points, children's locations."""
        self._import_locations()
        self._load_own_entry_points()
        if self.code_plugins:
            load_entry_point_plugins()
        for child in self._descendants():
            child._import_locations()

    def _matches(self, name: str) -> List[Tuple["Registry", RegistryEntry]]:
        return [(reg, reg._entries[name]) for reg in [self, *self._descendants()] if name in reg._entries]

    def _find(self, name: str) -> Optional[RegistryEntry]:
        """Own entries, then children (a root) or the parent chain (a child); discovery only on a miss."""
        self._import_locations()
        if name in self._entries:
            return self._entries[name]
        scope, dot, short = name.partition(".")
        if dot:
            load_entry_point_plugins()
            child = self._children.get(scope)
            if child is not None:
                return child._find(short)
        self._discover()
        matches = self._matches(name)
        if len(matches) > 1:
            places = ", ".join(f"{reg._where()}: {entry.source}" for reg, entry in matches)
            raise DuplicateComponentError(
                f"{self.kind} {name!r} is registered in several scopes ({places}); ask for 'scope.{name}'")
        if matches:
            return matches[0][1]
        if self.parent is not None:
            return self.parent._find(name)
        return None

    def _known(self) -> List[str]:
        return sorted({n for reg in [self, *self._descendants()] for n in reg._entries})

    def names(self) -> List[str]:
        """Every name this registry and its children hold (built-ins and installed plugins)."""
        self._discover()
        return self._known()

    def __contains__(self, name: str) -> bool:
        try:
            return self._find(name) is not None
        except DuplicateComponentError:
            return True

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, scope={self.scope!r}, {len(self._known())} entries)"

    def get(self, name: str) -> RegistryEntry:
        entry = self._find(name)
        if entry is None:
            raise UnknownComponentError(self._unknown_message(name))
        return entry

    def __getitem__(self, name: str) -> Any:
        """The registered object itself (``ZOO[name]`` is the entry, ``PIPELINES[name]`` the class)."""
        return self.get(name).obj

    def _unknown_message(self, name: str) -> str:
        known = self.root._known()
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        msg = f"unknown {self.kind} {name!r}."
        if close:
            msg += f" Did you mean {', '.join(repr(c) for c in close)}?"
        msg += f" Registered {self.kind}s: {', '.join(known) if known else '(none)'}."
        if _entry_point_errors:
            msg += " Plugins that failed to load: " + "; ".join(
                f"{k} ({v})" for k, v in sorted(_entry_point_errors.items()))
        return msg

    def config_of(self, name: str) -> Optional[Type]:
        return self.get(name).config

    def default_config(self, name: str, **overrides: Any) -> Any:
        """The registered config dataclass of ``name`` with its defaults, plus ``overrides``."""
        entry = self.get(name)
        if entry.config is None:
            raise TypeError(f"{self.kind} {name!r} has no config dataclass")
        return config_from_dict(entry.config, overrides)

    def name_for_config(self, cfg: Any) -> str:
        self._discover()
        registries = [self, *self._descendants()] + ([self.root] if self.parent is not None else [])
        matches = sorted({e.name for reg in registries for e in reg._entries.values() if e.config is type(cfg)})
        if len(matches) != 1:
            raise UnknownComponentError(
                f"cannot tell which {self.kind} a {type(cfg).__name__} builds "
                f"({'no' if not matches else 'several'} registered: {matches}); pass a name"
            )
        return matches[0]

    # ------------------------------------------------------------------ building
    def split_spec(self, spec: Any) -> Tuple[str, Dict[str, Any]]:
        """(name, kwargs) from a name, a dict/OmegaConf node with ``name`` (or ``type``), or a config."""
        spec = _to_plain(spec)
        if isinstance(spec, str):
            return spec, {}
        if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
            return self.name_for_config(spec), {"__config__": spec}
        if isinstance(spec, Mapping):
            values = dict(spec)
            keys = [k for k in ("name", "type") if k in values]
            if len(keys) != 1:
                raise TypeError(f"a {self.kind} spec needs exactly one of 'name' or 'type': {spec!r}")
            return values.pop(keys[0]), values
        raise TypeError(f"cannot build a {self.kind} from {type(spec).__name__}: {spec!r}")

    def build(self, spec: Any, **overrides: Any) -> Any:
        name, kwargs = self.split_spec(spec)
        entry = self.get(name)
        explicit_cfg = kwargs.pop("__config__", None)
        kwargs.update(overrides)
        if entry.config is not None:
            if explicit_cfg is not None:
                cfg = dataclasses.replace(explicit_cfg, **kwargs) if kwargs else explicit_cfg
            else:
                cfg = config_from_dict(entry.config, kwargs)
            obj = entry.obj(cfg)
        else:
            obj = entry.obj(**kwargs)
        if self.base is not None and not isinstance(obj, self.base):
            raise TypeError(
                f"{self.kind} {name!r} built a {type(obj).__name__}, not a {self.base.__qualname__}"
            )
        return obj


# Root registries: their locations name core modules only; the layers above hang their child registries
# under them (see the module docstring) and are found through the ``beit3_plugins`` entry-point group.
BACKBONES = Registry("backbone", base="torch.nn.Module")
HEADS = Registry("head", base="torch.nn.Module")
TASKS = Registry("task")
TOKENIZERS = Registry("tokenizer", locations=["beit3_plugins.tokenizer", "beit3_plugins.wordpiece"])
DATASETS = Registry("dataset", locations=["beit3_plugins.data.datasets"])
METRICS = Registry("metric")
