"""Reading image files as 8-bit RGB, with errors that name the file and the fix."""
import numpy as np
from PIL import Image

__all__ = ["ImageFileError", "load_rgb_image"]


class ImageFileError(OSError):
    """An image file that cannot be read or is refused; the message names the file and the fix."""


_SIXTEEN_BIT_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def load_rgb_image(path: str) -> Image.Image:
    """Read an image file as an 8-bit RGB PIL image (decoded in full, so truncation shows up here).

    16-bit greyscale images (PIL modes ``I;16*``, and ``I`` from a 16-bit PNG) are scaled to 8 bits
    (``round(v / 257)``: 0 -> 0, 65535 -> 255); converting them directly would clip every value above 255
    and give an almost white image. 16-bit colour PNGs already come out of PIL as 8-bit RGB.

    Raises:
        ImageFileError (an OSError): the file is missing, truncated or corrupt, not an image, an image of
            an unsupported kind (32-bit integer or float pixels), or larger than PIL's decompression-bomb
            limit; the message names ``path``.
    """
    try:
        with Image.open(path) as f:
            if f.mode in _SIXTEEN_BIT_GREY_MODES or (f.mode == "I" and f.format == "PNG"):
                values = np.asarray(f).astype(np.float64)  # (H, W) in 0..65535
                grey = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
                return Image.fromarray(grey, "L").convert("RGB")
            if f.mode in ("I", "F"):
                raise ImageFileError(
                    f"Image {path} has {'32-bit integer' if f.mode == 'I' else 'floating-point'} pixels (PIL mode "
                    f"{f.mode!r}), which cannot be mapped to 8-bit RGB without knowing their range; convert it to an "
                    f"8-bit RGB JPEG or PNG.")
            return f.convert("RGB")
    except ImageFileError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageFileError(
            f"Image {path} is refused as a possible decompression bomb: {e} If the file is trusted, raise "
            f"PIL.Image.MAX_IMAGE_PIXELS (or set it to None) before loading; otherwise remove it from the dataset."
        ) from e
    except Exception as e:  # OSError, SyntaxError, ValueError, struct.error...: PIL's many ways to fail
        raise ImageFileError(f"Cannot read image {path} ({type(e).__name__}: {e}). The file is missing, corrupt, "
                             f"truncated or not an image; replace it (re-download or regenerate the dataset).") from e
