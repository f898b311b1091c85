"""Which adapters the app offers: entries from `space_config/space.yaml` plus adapters found in `runs/`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainer.train.rundir import adapter_name, adapter_dirs, describe_adapter, trained_base
from trainer.hub.space_settings import AdapterEntry, SpaceConfig
from trainer.typed_yaml import ConfigError


@dataclass(frozen=True)
class RegisteredAdapter:
    """One adapter the app can serve, with where it comes from and, when known, the base it was trained on."""

    name: str
    location: str
    """Local folder, or Hub repo id."""
    is_local: bool
    revision: str | None = None
    subfolder: str | None = None
    description: str = ""
    origin: str = "config"
    """`config` (listed in space.yaml) or `runs` (discovered)."""
    trained_base: str | None = None
    """Base model named by the adapter's lineage (local adapters only; Hub adapters are checked when loaded)."""
    ground: bool | None = None
    """Whether its answers are grounded in the knowledge base by default (None: the Space's `grounding.enabled`)."""
    served_name: str | None = None
    """The `model` name an OpenAI-compatible server serves it under (`engine: openai`; None: `name`)."""

    @property
    def model_name(self) -> str:
        """The request's `model` field for this adapter on an OpenAI-compatible server."""
        return self.served_name or self.name

    def revision_id(self) -> str | None:
        """What identifies its weights: the sha256 of a local adapter file, the Hub revision, or None for an adapter
        that lives on a server only."""
        if not self.location:
            return None
        if self.is_local:
            from trainer.data.conversations import file_sha256

            return "sha256:" + file_sha256(Path(self.location) / "adapter_model.safetensors")
        return self.revision or "main"


class AdapterRegistry:
    """The adapters to offer, validated at start-up (a wrong entry fails with its name)."""

    def __init__(self, adapters: list[RegisteredAdapter]):
        names = [a.name for a in adapters]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ConfigError(f"adapter names used twice: {', '.join(sorted(duplicates))}")
        self._adapters = {a.name: a for a in adapters}

    @classmethod
    def from_config(cls, cfg: SpaceConfig, base_dir: str | Path = ".") -> "AdapterRegistry":
        base_dir = Path(base_dir)
        adapters = [cls._from_entry(i, entry, cfg, base_dir) for i, entry in enumerate(cfg.adapters)]
        if cfg.discover_runs and cfg.engine == "local":  # a server has the adapters listed for it, not runs/ here
            listed = {Path(a.location).resolve() for a in adapters if a.is_local}
            for adapter_dir in adapter_dirs(base_dir / cfg.runs_dir):
                if adapter_dir.resolve() not in listed:
                    name = adapter_name(adapter_dir.parent.parent.name, adapter_dir.parent.name)
                    adapters.append(RegisteredAdapter(name=name, location=str(adapter_dir), is_local=True,
                                                      description=describe_adapter(adapter_dir), origin="runs",
                                                      trained_base=trained_base(adapter_dir)))
        return cls(adapters)

    @staticmethod
    def _from_entry(index: int, entry: AdapterEntry, cfg: SpaceConfig, base_dir: Path) -> RegisteredAdapter:
        where = f"{cfg.source or 'space config'}: adapters[{index}] ({entry.name})"
        if entry.path is None and entry.repo is None:  # `engine: openai` only: the server has it, we know its name
            return RegisteredAdapter(name=entry.name, location="", is_local=False, description=entry.description,
                                     ground=entry.ground, served_name=entry.served_name)
        if entry.path is not None:
            path = Path(entry.path)
            if not path.is_absolute():
                path = base_dir / path
            if not (path / "adapter_config.json").is_file():
                raise ConfigError(f"{where}.path: {entry.path} is not an adapter folder (no adapter_config.json)")
            return RegisteredAdapter(name=entry.name, location=str(path), is_local=True,
                                     description=entry.description or describe_adapter(path),
                                     trained_base=trained_base(path), ground=entry.ground,
                                     served_name=entry.served_name)
        if entry.repo.count("/") != 1:
            raise ConfigError(f"{where}.repo: {entry.repo!r} is not a Hub repo id (owner/name)")
        return RegisteredAdapter(name=entry.name, location=entry.repo, is_local=False, revision=entry.revision,
                                 subfolder=entry.subfolder, description=entry.description, ground=entry.ground,
                                 served_name=entry.served_name)

    def __iter__(self):
        return iter(self._adapters.values())

    def __len__(self) -> int:
        return len(self._adapters)

    def names(self) -> list[str]:
        return list(self._adapters)

    def get(self, name: str) -> RegisteredAdapter:
        if name not in self._adapters:
            raise KeyError(f"no adapter named {name!r}; registered: {', '.join(self._adapters) or 'none'}")
        return self._adapters[name]
