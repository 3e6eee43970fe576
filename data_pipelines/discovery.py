"""Find annotated faces on disk: the 300-W layout at any depth, or any folder of image + .pts pairs.

A face is one `.pts` file with an image of the same stem beside it. Its *part* (`Face.subset`) is the
300-W folder it lives in — `afw`, `lfpw/trainset`, `lfpw/testset`, `helen/trainset`,
`helen/testset`, `ibug`, `01_Indoor`, `02_Outdoor` (matched case-insensitively on the nearest
enclosing folder) — or, outside that layout, the name of the folder holding the pair.

Named splits follow DESIGN.md §3 (`train`, `common`, `challenging`, `full`, `private`). Problems
(a .pts without an image, a malformed .pts, an unreadable image header) are logged as one-line
warnings, collected in a list and the pair is skipped, so one bad file never stops a run.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from .images import IMAGE_EXTENSIONS, DEFAULT_MAX_PIXELS, ImageReadError, check_image_file
from .pts import PtsFormatError, read_pts

log = logging.getLogger(__name__)

# 300-W parts and how many faces each has in the full release (DESIGN.md §3).
EXPECTED_COUNTS = {
    "afw": 337,
    "lfpw/trainset": 811,
    "helen/trainset": 2000,
    "lfpw/testset": 224,
    "helen/testset": 330,
    "ibug": 135,
    "01_Indoor": 300,
    "02_Outdoor": 300,
}
PARTS = tuple(EXPECTED_COUNTS)

SPLITS = {
    "train": ["afw", "lfpw/trainset", "helen/trainset"],
    "common": ["lfpw/testset", "helen/testset"],
    "challenging": ["ibug"],
    "full": ["lfpw/testset", "helen/testset", "ibug"],
    "private": ["01_Indoor", "02_Outdoor"],
}

# Which 300-W group each part belongs to (`subset_of`).
_GROUP_OF_PART = {
    "afw": "train",
    "lfpw/trainset": "train",
    "helen/trainset": "train",
    "lfpw/testset": "common",
    "helen/testset": "common",
    "ibug": "challenging",
    "01_Indoor": "private",
    "02_Outdoor": "private",
}
_SINGLE_FOLDER_PARTS = {"afw": "afw", "ibug": "ibug", "01_indoor": "01_Indoor", "02_outdoor": "02_Outdoor"}
_PAIRED_PARTS = {"lfpw", "helen"}
_PAIRED_SUBFOLDERS = {"trainset", "testset"}


@dataclass(frozen=True)
class Face:
    """One annotated face: the photo, its .pts file, and the 300-W part (or folder name) it came from."""

    image_path: str
    pts_path: str
    subset: str

    @property
    def name(self) -> str:
        """Part-qualified file stem, unique across a 300-W tree (e.g. `lfpw/trainset/image_0001`)."""
        return f"{self.subset}/{Path(self.pts_path).stem}"


@dataclass
class Problem:
    """A file that was skipped, and why (one line)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"

    @classmethod
    def from_error(cls, error) -> "Problem":
        """From an `ImageReadError` or `PtsFormatError` (keeping the .pts line number)."""
        line = getattr(error, "line", None)
        return cls(error.path, error.problem if line is None else f"line {line}: {error.problem}")


def part_of(directory, root) -> str:
    """The 300-W part of a folder found under `root`, else the folder's own name."""
    directory, root = Path(directory), Path(root)
    try:
        relative = directory.relative_to(root).parts
    except ValueError:
        relative = ()
    names = [root.parent.name, root.name, *relative]
    # Nearest enclosing 300-W folder wins; never look above the root, except for the
    # `lfpw`/`helen` parent of a root that is itself a `trainset`/`testset` folder.
    for index in range(len(names) - 1, 0, -1):
        name = names[index].lower()
        if name in _SINGLE_FOLDER_PARTS:
            return _SINGLE_FOLDER_PARTS[name]
        if name in _PAIRED_SUBFOLDERS and names[index - 1].lower() in _PAIRED_PARTS:
            return f"{names[index - 1].lower()}/{name}"
    return directory.name or str(directory)


def subset_of(face: Face) -> str:
    """`train`, `common`, `challenging` or `private` for a 300-W face; the folder name otherwise."""
    return _GROUP_OF_PART.get(face.subset, face.subset)


def find_faces(roots, *, check: bool = True, num_points: int | None = 68,
               max_pixels: int = DEFAULT_MAX_PIXELS, problems: list | None = None, warn: bool = True,
               unannotated: bool = False) -> list[Face]:
    """All image + .pts pairs under one or more roots (files or folders), sorted by path.

    With `check`, each .pts is parsed (and must hold `num_points` points unless None) and each
    image's header is checked (`images.check_image_file`); failures are logged (unless `warn` is
    False: a caller that reports `problems` itself), appended to `problems` (as `Problem`s) and
    skipped. With `unannotated`, an image without a .pts beside it is a problem too (an evaluation
    must not skip it silently; training data may hold other photos). Roots that overlap are not
    counted twice.
    """
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    found: dict[str, Face] = {}
    seen_images: set[str] = set()
    report = problems if problems is not None else []

    def skip(path, message):
        problem = Problem(str(path), message)
        report.append(problem)
        if warn:
            log.warning("skipped %s", problem)

    for root in roots:
        root = Path(root)
        if not root.exists():
            skip(root, "data folder not found")
            continue
        if root.is_file():  # a single .pts (or its image) names one face
            pts = root if root.suffix.lower() == ".pts" else root.with_suffix(".pts")
            if not pts.is_file():
                skip(root, "no .pts file with the same name beside it")
                continue
            candidates = [(pts, root.parent, _image_beside(pts))]
            base = root.parent
        else:
            lonely: list[Path] = []
            candidates = list(_walk_pts(root, lonely))
            base = root
            if unannotated:
                for image_path in lonely:
                    if os.path.realpath(image_path) not in seen_images:
                        seen_images.add(os.path.realpath(image_path))
                        skip(image_path, "no .pts annotation beside it (not evaluated)")
        for pts_path, directory, image_path in candidates:
            key = os.path.realpath(pts_path)
            if key in found:
                continue
            if image_path is None:
                skip(pts_path, "no image with the same name beside it (jpg/png/ppm/pgm/bmp)")
                continue
            if check:
                try:
                    points = read_pts(pts_path)
                    if num_points is not None and len(points) != num_points:
                        raise PtsFormatError(pts_path, f"has {len(points)} points, expected {num_points}")
                    check_image_file(image_path, max_pixels=max_pixels)
                except (PtsFormatError, ImageReadError) as error:
                    problem = Problem.from_error(error)
                    skip(problem.path, problem.message)
                    continue
            found[key] = Face(str(image_path), str(pts_path), part_of(directory, base))
    return sorted(found.values(), key=lambda face: face.pts_path)


def _walk_pts(root: Path, lonely: list | None = None):
    """(pts path, its folder, matching image or None) for every .pts under root, following links once;
    images with no .pts of their stem are appended to `lonely`."""
    seen = set()
    for directory, subdirectories, files in os.walk(root, followlinks=True):
        real = os.path.realpath(directory)
        if real in seen:
            subdirectories[:] = []
            continue
        seen.add(real)
        subdirectories.sort()
        lower = {name.lower(): name for name in files}
        if lonely is not None:
            stems = {name[:-4].lower() for name in files if name.lower().endswith(".pts")}
            lonely.extend(Path(directory) / name for name in sorted(files)
                          if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
                          and os.path.splitext(name)[0].lower() not in stems)
        for name in sorted(files):
            if name.lower().endswith(".pts") and not name.startswith("."):
                yield Path(directory) / name, Path(directory), _pick_image(Path(directory), name[:-4], lower)


def _image_beside(pts_path: Path) -> Path | None:
    """The image sharing the .pts file's stem (extension case ignored)."""
    try:
        lower = {entry.name.lower(): entry.name for entry in os.scandir(pts_path.parent)}
    except OSError:
        return None
    return _pick_image(pts_path.parent, pts_path.stem, lower)


def _pick_image(directory: Path, stem: str, lower_names: dict) -> Path | None:
    """jpg before jpeg, png, ppm, pgm, pnm, bmp (the order of IMAGE_EXTENSIONS)."""
    for extension in IMAGE_EXTENSIONS:
        name = lower_names.get((stem + extension).lower())
        if name is not None:
            return directory / name
    return None


@dataclass
class SplitReport:
    """Faces of a named split, how many each part gave, which expected parts are missing."""

    name: str
    faces: list[Face]
    counts: dict[str, int]
    missing: list[str]
    problems: list[Problem] = field(default_factory=list)

    def summary(self) -> str:
        parts = ", ".join(
            f"{part} {count}" + (f"/{EXPECTED_COUNTS[part]}" if part in EXPECTED_COUNTS else "")
            for part, count in self.counts.items()
        )
        text = f"{self.name}: {len(self.faces)} faces ({parts})"
        if self.missing:
            text += f"; missing: {', '.join(self.missing)}"
        if self.problems:
            text += f"; {len(self.problems)} file(s) skipped"
        return text


def load_split(name: str, roots, **find_options) -> SplitReport:
    """Faces of split `name` (a SPLITS key, a 300-W part such as `ibug`, or `all`) under `roots`.

    `all` takes every face found, 300-W or not. Options go to `find_faces`.
    """
    if name in SPLITS:
        parts = SPLITS[name]
    elif name in EXPECTED_COUNTS:
        parts = [name]
    elif name == "all":
        parts = None
    else:
        raise ValueError(f"unknown split {name!r}; choose one of {', '.join([*SPLITS, *PARTS, 'all'])}")
    problems: list[Problem] = []
    faces = find_faces(roots, problems=problems, **find_options)
    if parts is not None:
        faces = [face for face in faces if face.subset in parts]
        counts = {part: sum(face.subset == part for face in faces) for part in parts}
        missing = [part for part, count in counts.items() if count == 0]
    else:
        counts = {}
        for face in faces:
            counts[face.subset] = counts.get(face.subset, 0) + 1
        missing = []
    return SplitReport(name, faces, counts, missing, problems)
