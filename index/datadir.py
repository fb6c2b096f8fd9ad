"""The data directory (`FAQBOT_DATA_DIR`, default `./var`): the one place that knows its layout.

    <data_dir>/
      index/                 published index versions of the KB named `default` (index.faq_index)
        versions/<version>/  vectors.faiss + meta.json of one version
        CURRENT              the live version's name, replaced atomically
        .rebuild.lock        one rebuild at a time (admin.curation.rebuild)
      models/                models made here, never inside the packages
        bundled/             the bundled weights as sentence-transformers (+ auto's onnx/model_int8.onnx)
        .bundled-export.lock one export at a time (index.default_model)
        active.json          the model `faqbot finetune --deploy` switched to (bot.service)
        finetuned-<time>/    `faqbot finetune` output by default
      faqbot.db              the SQLite miss log and chat log (unless FAQBOT_DATABASE_URL)
      .kb-edit.lock          one KB file edit at a time (admin.curation.kb_edit)
      kbs/<name>/index/      the same as index/, for each KB not named `default` (`--kb NAME=PATH`)

One encoder, one database and one models/ serve every KB; only the index (with its calibration and
rebuild lock) is per KB. `default` keeps `<data_dir>/index`, so a data dir made before several KBs
existed serves on unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BUNDLED_EXPORT = "bundled"
DEFAULT_KB = "default"  # the name of a KB given as a plain path; its index stays at <data_dir>/index  # under models/: also the base `faqbot finetune --base bundled` trains from


@dataclass(frozen=True)
class DataDir:
    """Paths under one data directory; nothing is created until someone writes there."""

    root: Path
    kb: str = DEFAULT_KB  # whose index `index` and the paths under it are

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of(cls, where: Path | str | DataDir) -> DataDir:
        """A layout from a data dir path (the `default` KB's) or a layout already made for one KB."""
        return where if isinstance(where, DataDir) else cls(Path(where))

    def for_kb(self, name: str) -> DataDir:
        """The same data dir, with the index paths of the KB `name`."""
        return DataDir(self.root, kb=name)

    # --- the index (per KB) ---
    @property
    def index(self) -> Path:
        return self.root / "index" if self.kb == DEFAULT_KB else self.root / "kbs" / self.kb / "index"

    @property
    def index_versions(self) -> Path:
        return self.index / "versions"

    def index_version(self, version: str) -> Path:
        return self.index_versions / version

    @property
    def current_pointer(self) -> Path:
        return self.index / "CURRENT"

    @property
    def rebuild_lock(self) -> Path:
        return self.index / ".rebuild.lock"

    # --- models ---
    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def bundled_export(self) -> Path:
        return bundled_export_dir(self.models)

    @property
    def deployed_record(self) -> Path:
        return self.models / "active.json"

    def finetuned(self, stamp: str) -> Path:
        return self.models / f"finetuned-{stamp}"

    # --- the database and KB edits ---
    @property
    def database(self) -> Path:
        return self.root / "faqbot.db"

    @property
    def database_url(self) -> str:
        """The default SQLAlchemy URL of the miss log: SQLite in the data dir (an absolute path)."""
        return f"sqlite:///{self.root.resolve() / self.database.name}"

    @property
    def kb_edit_lock(self) -> Path:
        return self.root / ".kb-edit.lock"


def bundled_export_dir(models_dir: Path) -> Path:
    """The bundled weights exported as a sentence-transformers directory, under a models directory."""
    return Path(models_dir) / BUNDLED_EXPORT


def export_lock(models_dir: Path) -> Path:
    """The lock file the one-time bundled export is made under."""
    return Path(models_dir) / ".bundled-export.lock"
