"""Where files live under the images root: resolving user paths safely, listing folders, naming outputs.

Every path a user gives is resolved (symlinks too) and must land inside the images root; a path that
leaves it is refused before anything touches the file system beyond that check. The same holds for
every file the service writes or serves: its real path, links resolved, is inside the root, or the
service refuses with a sentence. A link loop, a dangling link or an unreadable folder is refused where
a user named it and left out of listings.
"""

import difflib
import errno
import heapq
import itertools
import os
import unicodedata
from collections.abc import Callable
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
    """The path is inside the root but nothing is there (404). missing: that path, when known."""

    def __init__(self, message: str, missing: Path | None = None):
        super().__init__(message)
        self.missing = missing


def resolve(root: Path, user_path: str, name: str = "imagePath") -> Path:
    """The absolute, symlink-free path that user_path names inside root, or PathRefused/PathNotFound
    (their sentences call it by the parameter's name)."""
    if "\x00" in user_path:
        raise PathRefused(f"{name} contains a NUL character.")
    given = PurePosixPath(user_path.strip())
    if given.is_absolute() and given.is_relative_to(CONTAINER_ROOT):
        given = given.relative_to(CONTAINER_ROOT)
    try:
        resolved = (root / given).resolve()
    except (RuntimeError, OSError):  # a loop of symbolic links (RuntimeError before Python 3.13, then ELOOP)
        raise PathRefused(f"{name} {user_path!r} leads into a loop of symbolic links; give another path.") from None
    if not resolved.is_relative_to(root):
        raise PathRefused(
            f"{name} {user_path!r} is outside the images root; give a path inside it, like {example(root)}."
        )
    try:
        found = resolved.exists()
    except OSError:  # a name too long for the file system, say: nothing can be there
        found = False
    if not found:
        raise PathNotFound(f"Nothing is at {name} {relative(root, resolved)!r} under the images root.", resolved)
    return resolved


OUTPUT_DIRS = frozenset({RESIZED_DIR, UPLOADS_DIR, DOWNLOADS_DIR})  # what the service writes, not what users name
SUGGEST_AMONG = 2000  # names of a folder a suggestion looks at, at most: a refused request stays cheap
EXAMPLE_FOLDERS = 20  # folders an example path is looked for in


def example(root: Path) -> str:
    """A path to show in an error: an image in one of the root's first folders of the user's own (not the
    service's outputs, which may hold other clients' files), else in the root itself; "folder/photo.jpg" in a
    root without images. Bounded, and read from the folders' listings alone (no stat an entry): anyone may
    send a path outside the root, so a refused request must stay cheap."""
    try:
        folders = _first_names(root, lambda e: e.name not in OUTPUT_DIRS and e.is_dir(follow_symlinks=False))
        for folder in [*(root / name for name in folders[:EXAMPLE_FOLDERS]), root]:
            images = _first_names(folder, lambda e: is_image_name(e.name) and e.is_file(follow_symlinks=False), 1)
            if images:
                return relative(root, folder / images[0])
    except OSError:
        pass
    return "folder/photo.jpg"


def _first_names(folder: Path, wanted: Callable[[os.DirEntry], bool], most: int = EXAMPLE_FOLDERS) -> list[str]:
    """The first `most` names, in order, of the entries of folder that wanted accepts, among its first
    SUGGEST_AMONG (hidden ones left out)."""
    with os.scandir(folder) as entries:
        found = [e.name for e in itertools.islice(entries, SUGGEST_AMONG) if not e.name.startswith(".") and wanted(e)]
    return heapq.nsmallest(most, found)


def nearest_name(root: Path, missing: Path) -> str | None:
    """The name beside a missing path that is closest to it (holidays -> holiday), as the user writes it, or
    None. Only the missing path's own folder is looked at, and only if that folder is inside the root."""
    folder = missing.parent
    if not folder.is_relative_to(root) or not folder.is_dir():
        return None
    try:
        with os.scandir(folder) as entries:
            names = [e.name for e in itertools.islice(entries, SUGGEST_AMONG) if not e.name.startswith(".")]
    except OSError:
        return None
    close = difflib.get_close_matches(missing.name, names, n=1, cutoff=0.75)
    return relative(root, folder / close[0]) if close else None


def relative(root: Path, path: Path) -> str:
    """The path as the user sees it: relative to the root, with forward slashes ('.' for the root)."""
    return path.relative_to(root).as_posix()


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def real(path: Path) -> Path | None:
    """path with every link resolved, or None where that cannot be: a link loop, a dangling link, a name too long."""
    try:
        return path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None


def _kind(root: Path, entry: os.DirEntry) -> str | None:
    """ "file" or "dir" for an entry a listing shows; None for what it leaves out: hidden names, links that
    lead out of the root, loop or dangle, and anything the file system will not describe."""
    if entry.name.startswith("."):
        return None
    try:
        if entry.is_symlink():
            target = real(Path(entry.path))
            if target is None or not target.is_relative_to(root):
                return None
        return "dir" if entry.is_dir() else "file" if entry.is_file() else None
    except OSError:
        return None


def _entries(root: Path, folder: Path, shown: Callable[[str], bool]):
    """(kind, relative path, is a link) of what a listing of folder shows; shown(relative path) may hide more."""
    try:
        with os.scandir(folder) as scanned:
            listed = [(_kind(root, entry), Path(entry.path), entry.is_symlink()) for entry in scanned]
    except OSError:  # vanished or unreadable since it was resolved: nothing to list
        return
    for kind, path, link in listed:
        if kind is not None and shown(relative(root, path)):
            yield kind, path, link


def list_images(
    root: Path, folder: Path, recursive: bool, most: int, shown: Callable[[str], bool] = lambda path: True
) -> list[str]:
    """The images in folder (its subfolders too if recursive), relative to root, sorted; at most `most` + 1,
    so that a caller can refuse a folder over its limit without the walk going through all of it.

    folder is already resolved inside root, so only symlinks need resolving (about 0.1 ms each): those
    that lead out of the root, loop or dangle are left out, as are hidden files, the outputs (resized/),
    links to folders (a walk never goes round in a circle) and whatever shown() hides. The walk keeps its
    own stack, so no depth of folders can exhaust Python's.
    """
    found, folders = [], [folder]
    while folders and len(found) <= most:
        for kind, path, link in _entries(root, folders.pop(), shown):
            if kind == "file" and is_image_name(path.name):
                found.append(relative(root, path))
            elif recursive and kind == "dir" and not link and path != root / RESIZED_DIR:
                folders.append(path)
    return sorted(found)[: most + 1]


def browse(root: Path, folder: Path, shown: Callable[[str], bool] = lambda path: True) -> tuple[list[str], list[str]]:
    """(subfolder names, image names) directly in folder, sorted, as list_images would show them."""
    folders, images = [], []
    for kind, path, _ in _entries(root, folder, shown):
        if kind == "dir":
            folders.append(path.name)
        elif is_image_name(path.name):
            images.append(path.name)
    return sorted(folders), sorted(images)


def make_folder(root: Path, folder: Path) -> Path:
    """Create folder and the folders above it, inside root, and return it; PathRefused when one of them
    is (or is a link to) something outside the root or not a folder, before anything is made below it."""
    os.close(open_folder(root, folder))
    return folder


def open_folder(root: Path, folder: Path) -> int:
    """A descriptor of folder (made if missing, with the folders above it), reached from root one folder at
    a time without following links: a write through it lands in that folder even if a folder on the way is
    swapped for a link out of the root after this call (a check of the path, then a write by the path,
    left a window in which a swap sent the write outside). A link on the way is followed only where it
    leads to a folder inside the root. The caller closes it. PathRefused when a folder cannot be made, or
    one on the way is (or is a link to) something outside the root or not a folder."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        current = root
        for part in folder.relative_to(root).parts:
            current = current / part
            try:
                os.mkdir(part, dir_fd=fd)
            except FileExistsError:
                pass
            except OSError as exc:
                raise PathRefused(f"The folder {relative(root, current)!r} cannot be made ({exc.strerror}).") from None
            try:
                below = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError:  # a link (ELOOP), or not a folder: followed only to a folder inside the root
                below = os.open(_folder_inside(root, current), os.O_RDONLY | os.O_DIRECTORY)
            os.close(fd)
            fd = below
    except OSError as exc:
        os.close(fd)
        raise PathRefused(f"The folder {relative(root, folder)!r} cannot be used ({exc.strerror}).") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _folder_inside(root: Path, path: Path) -> Path:
    """path's real path, when it is a folder inside root; else PathRefused."""
    target = real(path)
    if target is None or not target.is_relative_to(root) or not target.is_dir():
        raise PathRefused(
            f"The folder {relative(root, path)!r} is a link that leads outside the images root "
            "(or to something that is not a folder); the service writes only inside the root."
        )
    return target


def inside(root: Path, path: Path) -> Path | None:
    """The real path of a file the service is about to serve, when it is a file inside root; else None."""
    target = real(path)
    return target if target is not None and target.is_relative_to(root) and target.is_file() else None


def claim(folder: Path, name: str, fallbacks) -> Path:
    """A new, empty file in folder under the first free name of name and fallbacks (names for when it is
    taken), created exclusively: two uploads or downloads can never land on the same file."""
    for candidate in itertools.chain([name], fallbacks):  # fallbacks may be endless: taken one at a time
        try:
            os.close(os.open(folder / candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
            return folder / candidate
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
    raise FileExistsError(name)


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
