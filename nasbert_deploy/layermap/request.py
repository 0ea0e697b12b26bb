"""What `layer-map` is asked, and every check of it before any work (one-line typed errors, exit 2 in the CLI):
search settings, the output and its cache, the corpus, the proxy task files, the teacher (an encoder with layers),
the student (an arch string in its space, or an exported NAS-BERT folder), and a cache of other settings.

    prepared = prepare(LayerMapRequest("256:mha,ffn,id,id|...", Path("corpus.txt"), Path("map.json"),
                                       init="etd-impt", space="minilm-wide"))
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasbert_deploy.errors import ArchError, CheckpointError, OutputError
from nasbert_deploy.layermap.ga import GASettings
from nasbert_deploy.layermap.proxy import DEFAULT_TASKS, ProxySettings, ProxyTask, load_proxy_tasks, sample_corpus, task_digest
from nasbert_deploy.layermap.refine import RefineSettings
from nasbert_deploy.space import SearchSpace

CACHE_KIND = "nasbert-layer-map-cache"
RESULT_KIND = "nasbert-layer-map"


@dataclass(frozen=True)
class LayerMapRequest:
    """Search the distillation layer map of `student` (an arch string, or a NAS-BERT folder made by `export` or
    `distill`) under `teacher` (None: the offline default), on `corpus` and the proxy `tasks` (empty: the shipped
    samples); write the result to `out` and cache every evaluated map in `<out>.cache.json`; `refine` (top > 0) scores
    the search's best maps again with a longer proxy (`layermap.refine`). `init`/`space`/`supernet`
    say where an arch's weights start, as for `distill`."""

    student: str
    corpus: Path
    out: Path
    tasks: tuple[Path, ...] = ()
    teacher: Path | None = None
    init: str = "supernet"
    space: str = "minilm"
    supernet: Path | None = None
    proxy: ProxySettings = field(default_factory=ProxySettings)
    ga: GASettings = field(default_factory=GASettings)
    force: bool = False
    refine: RefineSettings = field(default_factory=RefineSettings)

    @property
    def cache_path(self) -> Path:
        return self.out.with_name(self.out.name + ".cache.json")

    @property
    def task_paths(self) -> tuple[Path, ...]:
        return tuple(self.tasks) or DEFAULT_TASKS


@dataclass
class Prepared:
    """Everything checked: blocks and teacher layers, the corpus sample, the proxy tasks, the resolved teacher, the
    student's description, the fitness key and the cache's maps (empty for a new search)."""

    num_blocks: int
    num_layers: int
    corpus: list[str]
    tasks: list[ProxyTask]
    teacher_path: Path
    student: dict[str, Any]
    key: dict[str, Any]
    cache: dict[str, Any]


def student_blocks(request: LayerMapRequest) -> tuple[int, dict[str, Any]]:
    """The student's block count and description, from its arch string (parsed in its space) or its folder's
    config.json (no weights read)."""
    from nasbert_deploy.space import get_space

    p = Path(request.student)
    if p.is_dir():
        from nasbert_deploy.teacher import read_model_config

        cfg = read_model_config(p, "--student", CheckpointError)
        if cfg["model_type"] != "nasbert" or not isinstance(cfg.get("arch"), str) or not isinstance(cfg.get("space"), dict):
            raise CheckpointError(
                f"--student {p} is not a NAS-BERT encoder (model_type 'nasbert' with an arch); pass a "
                "folder made by `export` or `distill`, or an arch string"
            )
        arch = SearchSpace.from_dict(cfg["space"]).parse(cfg["arch"])
        return len(arch.blocks), {"folder": str(p), "arch": str(arch), "init": "export"}
    if ":" not in request.student:
        raise ArchError(
            f"--student {request.student!r} is neither an existing folder nor an arch string "
            "(HIDDEN:op,op|HIDDEN:op,... as `nasbert-deploy space show` lists)"
        )
    if request.init == "supernet":
        from nasbert_deploy.supernet.default import resolve_supernet_dir
        from nasbert_deploy.supernet.network import read_meta

        folder = resolve_supernet_dir(request.supernet)
        arch = SearchSpace.from_dict(read_meta(folder)["space"]).parse(request.student)
        return len(arch.blocks), {"arch": str(arch), "init": "supernet", "supernet": str(folder)}
    arch = get_space(request.space).parse(request.student)
    return len(arch.blocks), {"arch": str(arch), "init": request.init, "space": request.space}


def _digest(texts: list[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]


def read_cache(path: Path, key: dict[str, Any], force: bool) -> dict[str, Any]:
    """The maps cached at `path` for `key` ({} when there is none); a cache of other settings is an `OutputError`
    naming them, unless `force` (then it is replaced when the first map is written)."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        if force:
            return {}
        raise OutputError(f"the cache {path} is unreadable or damaged; pass --force to start the search over") from None
    if not isinstance(data, dict) or data.get("kind") != CACHE_KIND or not isinstance(data.get("maps"), dict):
        if force:
            return {}
        raise OutputError(f"{path} is not a layer-map cache; pass --force to replace it, or choose another --out")
    if data.get("key") != json.loads(json.dumps(key)):
        if force:
            return {}
        old = data.get("key") if isinstance(data.get("key"), dict) else {}
        diff = sorted(k for k in set(old) | set(key) if old.get(k) != json.loads(json.dumps(key.get(k))))
        raise OutputError(
            f"the cache {path} holds maps scored with other settings ({', '.join(diff)} differ); pass "
            "--force to start over, or choose another --out"
        )
    return data


def prepare(request: LayerMapRequest) -> Prepared:
    """Every check before work, cheapest first; raises a `NasBertDeployError` subclass; writes nothing."""
    from nasbert_deploy.fileio import check_output
    from nasbert_deploy.supernet.teacher_cache import read_paragraphs
    from nasbert_deploy.teacher import resolve_teacher_path, teacher_layers

    request.ga.check()
    request.proxy.check()
    request.refine.check(request.proxy.steps)
    check_output(request.out, "file", request.force)
    check_output(request.cache_path, "file", True, option="the cache")  # a file beside --out, rewritten as maps come
    texts = read_paragraphs(request.corpus)
    corpus = sample_corpus(texts, request.proxy.corpus_limit, request.proxy.seed)
    tasks = load_proxy_tasks(request.task_paths, request.proxy)
    teacher_path = resolve_teacher_path(request.teacher)
    num_layers = teacher_layers(teacher_path)
    num_blocks, student = student_blocks(request)
    key = {
        "student": student,
        "teacher": str(teacher_path),
        "corpus": str(request.corpus),
        "corpus_sample": _digest(corpus),
        "tasks": {t.name: [str(t.path), task_digest(t.path)] for t in tasks},
        "proxy": request.proxy.to_dict(),
        "blocks": num_blocks,
        "teacher_layers": num_layers,
    }
    cache = read_cache(request.cache_path, key, request.force)
    return Prepared(num_blocks, num_layers, corpus, tasks, teacher_path, student, key, cache)


def build_start(request: LayerMapRequest, prepared: Prepared, teacher: Any) -> Any:
    """The start weights every map distils from (a `student.distill.Student`), seeded so a rerun builds the same."""
    import torch

    from nasbert_deploy.space import get_space
    from nasbert_deploy.student.distill import build_student
    from nasbert_deploy.teacher import check_compatible

    torch.manual_seed(request.proxy.seed)  # the block projections of an exported start are drawn
    if "folder" in prepared.student:
        student = build_student(from_export=prepared.student["folder"])
    elif request.init.startswith("etd-"):
        from nasbert_deploy.student.extraction import etd_student

        student = etd_student(
            request.student, get_space(request.space), teacher, prepared.corpus, request.init, seed=request.proxy.seed
        )
    else:
        space = get_space(request.space) if request.init == "random" else None
        student = build_student(request.student, supernet_dir=request.supernet, init=request.init, space=space)
    check_compatible(student.model.config.search_space, teacher)
    return student
