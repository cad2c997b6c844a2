"""Where files live under the images root: resolving user paths safely, listing folders, naming outputs.

Every path a user gives is resolved (symlinks too) and must land inside the images root; a path that
leaves it is refused before anything touches the file system beyond that check.
"""

import os
import unicodedata
from pathlib import Path, PurePosixPath

from Image import IMAGE_EXTENSIONS

# The root as the containers see it. Accepted in every mode, so a request written for the
# containers (`/ImageResize/images/Japan/a.jpg`) works against `python run.py` too.
CONTAINER_ROOT = PurePosixPath("/ImageResize/images")
RESIZED_DIR = "resized"
UPLOADS_DIR = "uploads"
DOWNLOADS_DIR = "downloads"


class PathRefused(ValueError):
    """The path leaves the images root or is malformed (400). str() is the user's sentence."""


class PathNotFound(LookupError):
    """The path is inside the root but nothing is there (404)."""


def resolve(root: Path, user_path: str, name: str = "imagePath") -> Path:
    """The absolute, symlink-free path that user_path names inside root, or PathRefused/PathNotFound
    (their sentences call it by the parameter's name)."""
    if "\x00" in user_path:
        raise PathRefused(f"{name} contains a NUL character.")
    given = PurePosixPath(user_path.strip())
    if given.is_absolute() and given.is_relative_to(CONTAINER_ROOT):
        given = given.relative_to(CONTAINER_ROOT)
    resolved = (root / given).resolve()
    if not resolved.is_relative_to(root):
        raise PathRefused(f"{name} {user_path!r} is outside the images root; give a path inside it, like Japan/a.jpg.")
    try:
        found = resolved.exists()
    except OSError:  # a name too long for the file system, say: nothing can be there
        found = False
    if not found:
        raise PathNotFound(f"Nothing is at {name} {relative(root, resolved)!r} under the images root.")
    return resolved


def relative(root: Path, path: Path) -> str:
    """The path as the user sees it: relative to the root, with forward slashes ('.' for the root)."""
    return path.relative_to(root).as_posix()


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_images(root: Path, folder: Path, recursive: bool) -> list[str]:
    """The images in folder (its subfolders too if recursive), relative to root, sorted.

    folder is already resolved inside root, so only symlinks need resolving (about 0.1 ms each):
    those that lead out of the root are left out. So are hidden files and the outputs (resized/).
    """
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if entry.is_symlink() and not path.resolve().is_relative_to(root):
                continue
            if entry.is_file() and is_image_name(entry.name):
                found.append(relative(root, path))
            elif recursive and entry.is_dir() and not entry.is_symlink() and path != root / RESIZED_DIR:
                found.extend(list_images(root, path, recursive))
    return sorted(found)


def browse(root: Path, folder: Path) -> tuple[list[str], list[str]]:
    """(subfolder names, image names) directly in folder, sorted; hidden entries and links out of the root left out."""
    folders, images = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            path = Path(entry.path)
            if entry.name.startswith(".") or not path.resolve().is_relative_to(root):
                continue
            if entry.is_dir():
                folders.append(entry.name)
            elif entry.is_file() and is_image_name(entry.name):
                images.append(entry.name)
    return sorted(folders), sorted(images)


def thumbnail_path(root: Path, source: str, extension: str) -> Path:
    """<root>/resized/<source's folder>/<name>_resized<ext>: mirrors the source's folder, so
    a.jpg in two folders never share a thumbnail."""
    source_path = PurePosixPath(source)
    return root / RESIZED_DIR / source_path.parent / f"{source_path.stem}_resized{extension}"


def upload_folder(root: Path, job_id: str) -> Path:
    return root / UPLOADS_DIR / job_id


def download_folder(root: Path, job_id: str) -> Path:
    return root / DOWNLOADS_DIR / job_id


def safe_file_name(name: str | None, fallback: str) -> str:
    """A file name safe to store (an upload's, a download's): the base name only, NFC, no control,
    invisible-format or separator characters (an encoded %2F or a backslash splits too), no leading dots,
    cut to 200 bytes of UTF-8 (room for a temporary file's affixes in 255); fallback if nothing is left.

    Unicode is kept (werkzeug's secure_filename would strip it).
    """
    base = unicodedata.normalize("NFC", (name or "").replace("\\", "/").rsplit("/", 1)[-1])
    cleaned = "".join(char for char in base if char.isprintable()).strip().lstrip(".")
    return cleaned.encode()[:200].decode(errors="ignore").strip() or fallback
