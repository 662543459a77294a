//! Thumbnails (client-server API, "Thumbnails"): which size to make for a request, and
//! making it with the `image` crate under decoding limits.
//!
//! Requests are rounded up to a bounded set of sizes: square crops and scales to the spec's
//! recommended sizes (plus 320x320 crop and 1280x960 scale), other crops to the requested
//! box rounded up to multiples of 32 (at most 640x640), so a media item has a bounded number
//! of cached thumbnails however clients ask. The spec's rules: never upscale, never return
//! less than was asked unless the original is smaller, return the original when it is
//! smaller than the request, and never an animated image unless `animated=true` was asked.

use std::{fmt, io::Cursor, path::Path};

use image::{
    DynamicImage, ImageFormat, ImageReader, Limits, codecs::jpeg::JpegEncoder, imageops::FilterType,
};
use ruma::api::error::ErrorKind;

use crate::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Crop,
    Scale,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThumbnailSize {
    pub width: u32,
    pub height: u32,
    pub method: Method,
    /// The client accepts an animated thumbnail (`animated=true`).
    pub animated: bool,
}

impl fmt::Display for ThumbnailSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let method = match self.method {
            Method::Crop => "crop",
            Method::Scale => "scale",
        };
        write!(f, "{}x{}-{method}", self.width, self.height)?;
        if self.animated {
            f.write_str("-animated")?;
        }
        Ok(())
    }
}

const CROP_SIZES: &[(u32, u32)] = &[(32, 32), (96, 96), (320, 320)];
/// Non-square crops are rounded up to multiples of this, up to [`MAX_CROP`].
const CROP_STEP: u32 = 32;
const MAX_CROP: u32 = 640;
const SCALE_SIZES: &[(u32, u32)] = &[(320, 240), (640, 480), (800, 600), (1280, 960)];

/// Images with more pixels than this are not decoded (413 `M_TOO_LARGE`): 32 megapixels
/// decode to at most 128 MiB of RGBA.
pub const MAX_PIXELS: u64 = 32 * 1024 * 1024;
/// The decoder's own allocation cap, a second line behind [`MAX_PIXELS`].
const MAX_ALLOC: u64 = 160 * 1024 * 1024;
const MAX_SIDE: u32 = 16_384;

/// The size to make for a request of `width` x `height`: the smallest standard size of
/// `method` at least as large in both dimensions; for a non-square crop, the request rounded
/// up to multiples of 32 (keeping roughly its aspect ratio). Larger requests than any of
/// these get the original (as "scale" to a box no image can exceed).
pub fn choose_size(width: u32, height: u32, method: Method, animated: bool) -> ThumbnailSize {
    let sizes = match method {
        Method::Crop => CROP_SIZES,
        Method::Scale => SCALE_SIZES,
    };
    let standard = sizes
        .iter()
        .find(|(w, h)| *w >= width && *h >= height)
        .filter(|_| method == Method::Scale || width == height);
    let (width, height, method) = match standard {
        Some(&(width, height)) => (width, height, method),
        None if method == Method::Crop && width <= MAX_CROP && height <= MAX_CROP => (
            width.div_ceil(CROP_STEP) * CROP_STEP,
            height.div_ceil(CROP_STEP) * CROP_STEP,
            Method::Crop,
        ),
        None => (MAX_SIDE, MAX_SIDE, Method::Scale),
    };
    ThumbnailSize {
        width,
        height,
        method,
        animated,
    }
}

/// What [`render`] made.
pub enum Rendered {
    /// The original is already small enough: serve it, with its detected type.
    Original { content_type: &'static str },
    Encoded {
        bytes: Vec<u8>,
        content_type: &'static str,
    },
}

/// Why a thumbnail cannot be made. The first two depend only on the content, so the caller
/// remembers them instead of decoding the same file again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Refusal {
    /// Not a PNG, JPEG, GIF or WebP image, or a broken one.
    NotAnImage,
    /// More than [`MAX_PIXELS`] (or over the decoder's limits).
    TooLarge,
}

impl Refusal {
    pub fn into_error(self) -> Error {
        match self {
            Self::NotAnImage => Error::bad_request(
                ErrorKind::Unknown,
                "Cannot generate a thumbnail for this content: it is not a PNG, JPEG, GIF or \
                 WebP image.",
            ),
            Self::TooLarge => Error::new(
                ErrorKind::TooLarge,
                "The image is too large for this server to thumbnail.",
            ),
        }
    }
}

/// A failed [`render`]: a refusal, or a server-side problem (unreadable file, encoder).
#[derive(Debug)]
pub enum RenderError {
    Refused(Refusal),
    Internal(String),
}

impl From<Refusal> for RenderError {
    fn from(refusal: Refusal) -> Self {
        Self::Refused(refusal)
    }
}

fn mime(format: ImageFormat) -> Option<&'static str> {
    Some(match format {
        ImageFormat::Png => "image/png",
        ImageFormat::Jpeg => "image/jpeg",
        ImageFormat::Gif => "image/gif",
        ImageFormat::WebP => "image/webp",
        _ => return None,
    })
}

fn limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    limits
}

fn open(path: &Path) -> Result<ImageReader<std::io::BufReader<std::fs::File>>, RenderError> {
    let mut reader = ImageReader::open(path)
        .and_then(ImageReader::with_guessed_format)
        .map_err(|error| {
            RenderError::Internal(format!("reading media for a thumbnail: {error}"))
        })?;
    reader.limits(limits());
    Ok(reader)
}

/// Whether the image may be animated: GIF and WebP always count (a one-frame file is
/// re-encoded too, which costs little); PNG when it is an APNG.
fn maybe_animated(path: &Path, format: ImageFormat) -> Result<bool, RenderError> {
    Ok(match format {
        ImageFormat::Gif | ImageFormat::WebP => true,
        ImageFormat::Png => {
            let file = std::fs::File::open(path)
                .map_err(|e| RenderError::Internal(format!("reading media: {e}")))?;
            image::codecs::png::PngDecoder::new(std::io::BufReader::new(file))
                .and_then(|decoder| decoder.is_apng())
                .map_err(decode_error)?
        }
        _ => false,
    })
}

/// Makes the thumbnail of the image in `path` at `size` (blocking: run it off the async
/// threads). The format is sniffed from the content, never taken from the uploader's
/// claim; the image's dimensions are read from its header and checked before any pixel is
/// decoded, so a decompression bomb is refused cheaply.
pub fn render(path: &Path, size: ThumbnailSize) -> Result<Rendered, RenderError> {
    let format = open(path)?.format().ok_or(Refusal::NotAnImage)?;
    let content_type = mime(format).ok_or(Refusal::NotAnImage)?;
    let (width, height) = open(path)?.into_dimensions().map_err(decode_error)?;
    if width == 0 || height == 0 {
        return Err(Refusal::NotAnImage.into());
    }
    let (target_width, target_height, crop) = match target(width, height, size) {
        Some(target) => target,
        // Small enough already; but an animated original only goes out when animation was
        // asked for: otherwise its first frame, re-encoded at its own size.
        None if !size.animated && maybe_animated(path, format)? => (width, height, false),
        None => return Ok(Rendered::Original { content_type }),
    };
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(Refusal::TooLarge.into());
    }
    let image = open(path)?.decode().map_err(decode_error)?;
    let covers_box = width >= size.width && height >= size.height;
    let thumbnail = match (crop, covers_box) {
        (true, true) => image.resize_to_fill(target_width, target_height, FilterType::Triangle),
        // Smaller than the crop box in some dimension: cut the box's aspect ratio out of the
        // middle, without scaling (never upscale).
        (true, false) => image.crop_imm(
            width.saturating_sub(target_width) / 2,
            height.saturating_sub(target_height) / 2,
            target_width,
            target_height,
        ),
        (false, _) if (target_width, target_height) == (width, height) => image,
        (false, _) => image.thumbnail(target_width, target_height),
    };
    encode(&thumbnail, format)
}

/// The thumbnail's dimensions and whether it is cropped, or `None` when the original
/// should be served as it is.
fn target(width: u32, height: u32, size: ThumbnailSize) -> Option<(u32, u32, bool)> {
    let (box_width, box_height) = (size.width, size.height);
    if width <= box_width && height <= box_height {
        return None;
    }
    match size.method {
        Method::Scale => {
            // Fit inside the box, keeping the aspect ratio.
            let ratio = f64::min(
                f64::from(box_width) / f64::from(width),
                f64::from(box_height) / f64::from(height),
            );
            let w = ((f64::from(width) * ratio).round() as u32).max(1);
            let h = ((f64::from(height) * ratio).round() as u32).max(1);
            Some((w, h, false))
        }
        Method::Crop => {
            if width >= box_width && height >= box_height {
                return Some((box_width, box_height, true));
            }
            // The largest region with the box's aspect ratio that fits in the image.
            let w = u32::min(
                width,
                (u64::from(height) * u64::from(box_width) / u64::from(box_height)) as u32,
            )
            .max(1);
            let h = u32::min(
                height,
                (u64::from(width) * u64::from(box_height) / u64::from(box_width)) as u32,
            )
            .max(1);
            Some((w, h, true))
        }
    }
}

fn decode_error(error: image::ImageError) -> RenderError {
    match error {
        image::ImageError::Limits(_) => Refusal::TooLarge.into(),
        // The file was opened; failing to read on means truncated or broken content.
        _ => Refusal::NotAnImage.into(),
    }
}

/// JPEG stays JPEG (photos); everything else becomes PNG (keeps transparency).
fn encode(image: &DynamicImage, source: ImageFormat) -> Result<Rendered, RenderError> {
    let mut bytes = Vec::new();
    let content_type = if source == ImageFormat::Jpeg {
        JpegEncoder::new_with_quality(&mut bytes, 80)
            .encode_image(&image.to_rgb8())
            .map_err(|e| RenderError::Internal(format!("encoding a thumbnail: {e}")))?;
        "image/jpeg"
    } else {
        image
            .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
            .map_err(|e| RenderError::Internal(format!("encoding a thumbnail: {e}")))?;
        "image/png"
    };
    Ok(Rendered::Encoded {
        bytes,
        content_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(width: u32, height: u32, method: Method) -> ThumbnailSize {
        ThumbnailSize {
            width,
            height,
            method,
            animated: false,
        }
    }

    fn refusal(result: Result<Rendered, RenderError>) -> Refusal {
        match result {
            Err(RenderError::Refused(refusal)) => refusal,
            Err(RenderError::Internal(error)) => panic!("internal error: {error}"),
            Ok(_) => panic!("expected a refusal"),
        }
    }

    #[test]
    fn requests_round_up_to_standard_sizes() {
        let choose = |w, h, method| choose_size(w, h, method, false);
        assert_eq!(choose(24, 24, Method::Crop), size(32, 32, Method::Crop));
        assert_eq!(choose(96, 96, Method::Crop), size(96, 96, Method::Crop));
        assert_eq!(
            choose(320, 240, Method::Scale),
            size(320, 240, Method::Scale)
        );
        assert_eq!(
            choose(321, 100, Method::Scale),
            size(640, 480, Method::Scale)
        );
        assert_eq!(
            choose(1000, 900, Method::Scale),
            size(1280, 960, Method::Scale)
        );
        // A non-square crop keeps (roughly) its aspect ratio.
        assert_eq!(choose(300, 40, Method::Crop), size(320, 64, Method::Crop));
        assert_eq!(choose(40, 20, Method::Crop), size(64, 32, Method::Crop));
        // Larger than every size: the original.
        assert_eq!(choose(4000, 10, Method::Crop).width, MAX_SIDE);
        assert_eq!(choose(4000, 10, Method::Scale).width, MAX_SIDE);
        assert_eq!(
            choose_size(96, 96, Method::Crop, true).to_string(),
            "96x96-crop-animated"
        );
    }

    #[test]
    fn scale_fits_the_box_and_keeps_the_aspect_ratio() {
        assert_eq!(
            target(1280, 960, size(640, 480, Method::Scale)),
            Some((640, 480, false))
        );
        assert_eq!(
            target(2000, 500, size(800, 600, Method::Scale)),
            Some((800, 200, false))
        );
    }

    #[test]
    fn never_upscales() {
        // Smaller than the box: the original.
        assert_eq!(target(20, 20, size(96, 96, Method::Crop)), None);
        assert_eq!(target(300, 200, size(320, 240, Method::Scale)), None);
        // Wider but not taller than a crop box: cut out the box's aspect, unscaled.
        assert_eq!(
            target(200, 50, size(96, 96, Method::Crop)),
            Some((50, 50, true))
        );
    }

    #[test]
    fn crop_gives_exactly_the_box() {
        assert_eq!(
            target(640, 480, size(96, 96, Method::Crop)),
            Some((96, 96, true))
        );
    }

    fn write_png(dir: &Path, width: u32, height: u32) -> std::path::PathBuf {
        let path = dir.join(format!("{width}x{height}.png"));
        let image = image::RgbaImage::from_fn(width, height, |x, y| {
            image::Rgba([(x % 256) as u8, (y % 256) as u8, 128, 255])
        });
        image.save_with_format(&path, ImageFormat::Png).unwrap();
        path
    }

    #[test]
    fn renders_png_thumbnails_of_the_right_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_png(dir.path(), 640, 480);
        let Rendered::Encoded {
            bytes,
            content_type,
        } = render(&path, size(96, 96, Method::Crop)).unwrap()
        else {
            panic!("expected a thumbnail")
        };
        assert_eq!(content_type, "image/png");
        let decoded = image::load_from_memory(&bytes).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (96, 96));
    }

    #[test]
    fn gif_and_webp_are_thumbnailed_to_png_and_jpeg_stays_jpeg() {
        let dir = tempfile::tempdir().unwrap();
        let image = DynamicImage::ImageRgba8(image::RgbaImage::from_fn(400, 300, |x, y| {
            image::Rgba([(x % 256) as u8, (y % 256) as u8, 7, 255])
        }));
        for (format, expected) in [
            (ImageFormat::Gif, "image/png"),
            (ImageFormat::WebP, "image/png"),
            (ImageFormat::Jpeg, "image/jpeg"),
        ] {
            let path = dir
                .path()
                .join(format!("source.{}", format.extensions_str()[0]));
            let source = if format == ImageFormat::Jpeg {
                DynamicImage::ImageRgb8(image.to_rgb8())
            } else {
                image.clone()
            };
            source.save_with_format(&path, format).unwrap();
            let Rendered::Encoded {
                bytes,
                content_type,
            } = render(&path, size(320, 240, Method::Scale)).unwrap()
            else {
                panic!("expected a thumbnail of {format:?}")
            };
            assert_eq!(content_type, expected, "{format:?}");
            let decoded = image::load_from_memory(&bytes).unwrap();
            assert_eq!(
                (decoded.width(), decoded.height()),
                (320, 240),
                "{format:?}"
            );
        }
    }

    #[test]
    fn non_images_and_bombs_are_refused_before_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("text");
        std::fs::write(&text, b"<html><script>alert(1)</script></html>").unwrap();
        let result = render(&text, size(96, 96, Method::Crop));
        assert_eq!(refusal(result), Refusal::NotAnImage);

        // PNG headers claiming 60000 x 60000 pixels (over the decoder's side limit) and
        // 16000 x 16000 (within it, but 256 megapixels), with no pixel data.
        for (width, height) in [(60_000, 60_000), (16_000, 16_000)] {
            let bomb = dir.path().join(format!("bomb{width}.png"));
            std::fs::write(&bomb, png_header(width, height)).unwrap();
            let result = render(&bomb, size(96, 96, Method::Crop));
            assert_eq!(refusal(result), Refusal::TooLarge, "{width}x{height}");
        }

        // A truncated image: refused, not an internal error.
        let truncated = dir.path().join("truncated.png");
        let whole = std::fs::read(write_png(dir.path(), 200, 200)).unwrap();
        std::fs::write(&truncated, &whole[..whole.len() / 2]).unwrap();
        let result = render(&truncated, size(96, 96, Method::Crop));
        assert_eq!(refusal(result), Refusal::NotAnImage);

        // A GIF with a zero-width logical screen.
        let gif = dir.path().join("zero.gif");
        let mut bytes = b"GIF89a".to_vec();
        bytes.extend_from_slice(&[0, 0, 200, 0, 0, 0, 0]);
        bytes.push(0x3b);
        std::fs::write(&gif, bytes).unwrap();
        let result = render(&gif, size(96, 96, Method::Crop));
        assert_eq!(refusal(result), Refusal::NotAnImage);
    }

    #[test]
    fn non_square_crops_have_the_requested_aspect() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_png(dir.path(), 800, 600);
        let Ok(Rendered::Encoded { bytes, .. }) =
            render(&path, choose_size(300, 40, Method::Crop, false))
        else {
            panic!("expected a thumbnail")
        };
        let decoded = image::load_from_memory(&bytes).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (320, 64));
    }

    #[test]
    fn small_animations_are_flattened_unless_animation_is_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("small.gif");
        let frame = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            20,
            10,
            image::Rgba([200, 10, 10, 255]),
        ));
        frame.save_with_format(&path, ImageFormat::Gif).unwrap();
        let Ok(Rendered::Encoded {
            bytes,
            content_type,
        }) = render(&path, size(96, 96, Method::Crop))
        else {
            panic!("expected a re-encoded first frame")
        };
        assert_eq!(content_type, "image/png");
        let decoded = image::load_from_memory(&bytes).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (20, 10));
        let animated = ThumbnailSize {
            animated: true,
            ..size(96, 96, Method::Crop)
        };
        assert!(matches!(
            render(&path, animated),
            Ok(Rendered::Original {
                content_type: "image/gif"
            })
        ));
    }

    /// A PNG signature and IHDR chunk (8-bit RGBA) for the given dimensions.
    /// A PNG claiming `width` x `height` (8-bit RGBA) whose pixel data is one empty zlib
    /// stream: what a decompression bomb looks like up to its first data chunk.
    pub(crate) fn png_header(width: u32, height: u32) -> Vec<u8> {
        let mut header = width.to_be_bytes().to_vec();
        header.extend_from_slice(&height.to_be_bytes());
        header.extend_from_slice(&[8, 6, 0, 0, 0]);
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        for (kind, data) in [
            (b"IHDR", header.as_slice()),
            (
                b"IDAT",
                &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01][..],
            ),
            (b"IEND", &[][..]),
        ] {
            let mut chunk = kind.to_vec();
            chunk.extend_from_slice(data);
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            out.extend_from_slice(&chunk);
            out.extend_from_slice(&crc32(&chunk).to_be_bytes());
        }
        out
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &byte in data {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
}
