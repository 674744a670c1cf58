"""The pretrained models a run needs, where they are, and the one command that fetches them.

Nothing at run time downloads: every model resolves to a local folder or file, or to the local
Hugging Face cache (``local_files_only``). ``check_available`` looks every model up before any
work starts and raises one :class:`MissingModelsError` naming all that are missing and the command
that fetches them (``python -m nabla fetch-models --config ...``), run on a machine with internet.
A local path (:func:`is_local_path`) is never named as a hub id; a model folder this project builds
(:class:`LocalFolder`: a prior, the learned reward) is checked by ``check_folders``, whose message
names the command that builds it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from nabla.errors import UserError

FETCH_COMMAND = "python -m nabla fetch-models --config {config}"
#: the folders this project writes its own models and results under: a path in one is never a hub id
LOCAL_ROOTS = ("runs", "results")
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def is_local_path(name: str | Path) -> bool:
    """Whether a model name is a path on disk rather than a hub id (``org/name``): it exists here,
    or it is not of that form (a path starting with ``.``, ``/`` or ``~``, one with more than one
    slash or none, or one under :data:`LOCAL_ROOTS` such as ``runs/tiny/prior``), existing or not.
    A local path is never looked up on the hub, nor named as something to fetch from it."""
    text = str(name)
    return Path(text).exists() or _HUB_ID.fullmatch(text) is None or text.split("/", 1)[0] in LOCAL_ROOTS


@dataclass(frozen=True)
class HubModel:
    """A model repository (``filename=None``: a whole snapshot) or one file of one, and its use."""

    repo_id: str
    filename: str | None = None
    purpose: str = field(default="", compare=False)  # one model used twice is one model
    #: a snapshot's files to fetch (None: all of them); SD 1.5's repository also holds 8 GB of
    #: single-file checkpoints that the diffusers folders do not need
    allow_patterns: tuple[str, ...] | None = None
    repo_type: str = "model"  # or "dataset" (prompt sets)

    def __str__(self) -> str:
        name = self.repo_id if self.filename is None else f"{self.repo_id}/{self.filename}"
        name = f"datasets/{name}" if self.repo_type == "dataset" and not self.is_local else name
        return f"{name} ({self.purpose})" if self.purpose else name

    @property
    def is_local(self) -> bool:
        """A path on disk given in place of a hub id (a folder or a file): :func:`is_local_path`."""
        return is_local_path(self.repo_id)


@dataclass(frozen=True)
class UrlModel:
    """One file published at a URL rather than on the Hub (e.g. the FID Inception network); kept
    as ``HF_HOME/nabla/<file name>``, so that copying the Hugging Face cache carries it too. The
    name is the URL's last part unless ``filename`` gives one (a URL ending in a query)."""

    url: str
    purpose: str = field(default="", compare=False)
    filename: str | None = None

    def __str__(self) -> str:
        return f"{self.url} ({self.purpose})" if self.purpose else self.url

    @property
    def name(self) -> str:
        return self.filename or self.url.rsplit("/", 1)[-1]

    @property
    def cache_path(self) -> Path:
        from huggingface_hub import constants

        return Path(constants.HF_HOME) / "nabla" / self.name

    def in_folder(self, folder: str) -> HubModel:
        """The same file under its published name in a local folder (``NAME=DIR`` specs)."""
        return HubModel(folder, self.name, purpose=self.purpose)


class MissingModelsError(UserError, FileNotFoundError):
    """Models neither on disk nor in the local Hugging Face cache; the message lists them all, the
    hub's with the command that fetches them, local paths apart (nothing fetches a local path)."""

    def __init__(self, missing: Sequence[HubModel | UrlModel], config: str | None = None):
        self.missing = list(missing)
        from huggingface_hub import constants

        local = [m for m in self.missing if isinstance(m, HubModel) and m.is_local]
        fetchable = [m for m in self.missing if m not in local]
        parts = []
        if fetchable:
            lines = "\n".join(f"  - {m}" for m in fetchable)
            fetch = FETCH_COMMAND.format(config=config or "<your config>")
            parts.append(
                f"{len(fetchable)} model(s) are not on this machine (the Hugging Face cache at "
                f"HF_HOME={constants.HF_HOME}); nothing is downloaded at run time:\n{lines}\n"
                f"Fetch them on a machine with internet with:  {fetch}\n"
                f"then copy its Hugging Face cache here (or set HF_HOME to a shared copy)."
            )
        if local:
            lines = "\n".join(f"  - {m}" for m in local)
            parts.append(f"{len(local)} local path(s) do not exist (a local path is not a hub id and is never "
                         f"fetched; give an existing one):\n{lines}")
        super().__init__("\n".join(parts))


@dataclass(frozen=True)
class LocalFolder:
    """A model folder this project builds itself (a prior, the learned reward's classifier): never
    on the hub, so where it is missing the message names what builds it (``build``), not a fetch."""

    path: str
    marker: str  # a file every built folder holds
    what: str  # e.g. "the tiny prior"
    build: str  # e.g. "build it with `python -m nabla pretrain ...` (the workflow's rule ...)"

    def problem(self) -> str | None:
        """None if the folder is built; else one line: which folder, and what builds it."""
        if (Path(self.path) / self.marker).is_file():
            return None
        why = "does not exist" if not Path(self.path).exists() else f"holds no {self.marker}"
        return f"{self.what} {self.path} {why}: {self.build}"


class MissingFolderError(UserError, FileNotFoundError):
    """Local model folders not built yet, one line each."""


def check_folders(folders: Iterable[LocalFolder]) -> None:
    """MissingFolderError naming every folder of ``folders`` not built yet."""
    if problems := list(dict.fromkeys(p for f in folders if (p := f.problem()))):
        raise MissingFolderError("\n".join(problems))


def local_path(model: HubModel | UrlModel) -> Path | None:
    """Where the model is on this machine, or None; never touches the network."""
    if isinstance(model, UrlModel):
        return model.cache_path if model.cache_path.exists() else None
    if model.is_local:
        path = Path(model.repo_id) if model.filename is None else Path(model.repo_id) / model.filename
        return path if path.exists() else None
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        if model.filename is None:
            return Path(snapshot_download(model.repo_id, repo_type=model.repo_type, local_files_only=True))
        return Path(hf_hub_download(model.repo_id, model.filename, repo_type=model.repo_type, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        return None


def resolve(model: HubModel | UrlModel, config: str | None = None) -> Path:
    """The model's local path; MissingModelsError (with the fetch command) if it has none."""
    return check_available([model], config)[model]


def check_available(models: Iterable[HubModel | UrlModel], config: str | None = None) -> dict:
    """Every model's local path, or one MissingModelsError listing every missing one."""
    found, missing = {}, []
    for model in dict.fromkeys(models):  # unique, in order
        path = local_path(model)
        if path is None:
            missing.append(model)
        else:
            found[model] = path
    if missing:
        raise MissingModelsError(missing, config)
    return found


def fetch(models: Iterable[HubModel | UrlModel]) -> dict:
    """Download what is not on disk yet (the only function here that uses the network)."""
    from huggingface_hub import hf_hub_download, snapshot_download

    paths = {}
    for model in dict.fromkeys(models):
        path = local_path(model)
        if path is None and isinstance(model, UrlModel):
            path = _download(model.url, model.cache_path)
        elif path is None and model.is_local:
            raise MissingModelsError([model])  # a local path that does not exist: nothing fetches it
        elif path is None:
            path = Path(snapshot_download(model.repo_id, repo_type=model.repo_type, allow_patterns=model.allow_patterns)
                        if model.filename is None else hf_hub_download(model.repo_id, model.filename, repo_type=model.repo_type))
        paths[model] = path
    return paths


def _download(url: str, path: Path) -> Path:
    """Fetch ``url`` to ``path`` through a temporary file, so an interrupted download leaves nothing."""
    import urllib.request

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    with urllib.request.urlopen(url) as response, open(partial, "wb") as out:
        while chunk := response.read(1 << 20):
            out.write(chunk)
    partial.replace(path)
    return path
