//! Thumbnails (client-server API, "Thumbnails"): which size to make for a request, and
//! making it with the `image` crate under decoding limits.
//!
//! Requests are rounded up to a fixed set of sizes (the spec's recommended five plus two
//! larger ones), so a media item has at most seven cached thumbnails however clients ask.
//! The spec's rules: never upscale, never return less than was asked unless the original is
//! smaller, and return the original when it is smaller than the request.

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
}

impl fmt::Display for ThumbnailSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let method = match self.method {
            Method::Crop => "crop",
            Method::Scale => "scale",
        };
        write!(f, "{}x{}-{method}", self.width, self.height)
    }
}

const CROP_SIZES: &[(u32, u32)] = &[(32, 32), (96, 96), (320, 320)];
const SCALE_SIZES: &[(u32, u32)] = &[(320, 240), (640, 480), (800, 600), (1280, 960)];

/// Images with more pixels than this are not decoded (413 `M_TOO_LARGE`): 32 megapixels
/// decode to at most 128 MiB of RGBA.
pub const MAX_PIXELS: u64 = 32 * 1024 * 1024;
/// The decoder's own allocation cap, a second line behind [`MAX_PIXELS`].
const MAX_ALLOC: u64 = 160 * 1024 * 1024;
const MAX_SIDE: u32 = 16_384;

/// The smallest standard size of `method` at least as large as the request in both
/// dimensions. Larger requests than any standard size get the largest scale size grown
/// to the request (it is capped by the original's size when rendered, so the original
/// comes back for any request larger than the image).
pub fn choose_size(width: u32, height: u32, method: Method) -> ThumbnailSize {
    let sizes = match method {
        Method::Crop => CROP_SIZES,
        Method::Scale => SCALE_SIZES,
    };
    match sizes.iter().find(|(w, h)| *w >= width && *h >= height) {
        Some(&(width, height)) => ThumbnailSize {
            width,
            height,
            method,
        },
        // Bigger than every standard size: the original (rendered as "scale" to a box no
        // image can exceed, which returns the original unchanged).
        None => ThumbnailSize {
            width: MAX_SIDE,
            height: MAX_SIDE,
            method: Method::Scale,
        },
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

fn cannot_thumbnail() -> Error {
    Error::bad_request(
        ErrorKind::Unknown,
        "Cannot generate a thumbnail for this content: it is not a PNG, JPEG, GIF or WebP image.",
    )
}

fn too_large() -> Error {
    Error::new(
        ErrorKind::TooLarge,
        "The image is too large for this server to thumbnail.",
    )
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

fn open(path: &Path) -> Result<ImageReader<std::io::BufReader<std::fs::File>>, Error> {
    let mut reader = ImageReader::open(path)
        .and_then(ImageReader::with_guessed_format)
        .map_err(|error| Error::internal(format!("reading media for a thumbnail: {error}")))?;
    reader.limits(limits());
    Ok(reader)
}

/// Makes the thumbnail of the image in `path` at `size` (blocking: run it off the async
/// threads). The format is sniffed from the content, never taken from the uploader's
/// claim; the image's dimensions are read from its header and checked before any pixel is
/// decoded, so a decompression bomb is refused cheaply.
pub fn render(path: &Path, size: ThumbnailSize) -> Result<Rendered, Error> {
    let format = open(path)?.format().ok_or_else(cannot_thumbnail)?;
    let content_type = mime(format).ok_or_else(cannot_thumbnail)?;
    let (width, height) = open(path)?.into_dimensions().map_err(decode_error)?;
    let Some((target_width, target_height, crop)) = target(width, height, size) else {
        return Ok(Rendered::Original { content_type });
    };
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(too_large());
    }
    let image = open(path)?.decode().map_err(decode_error)?;
    let covers_box = width >= size.width && height >= size.height;
    let thumbnail = match (crop, covers_box) {
        (true, true) => image.resize_to_fill(target_width, target_height, FilterType::Triangle),
        // Smaller than the crop box in some dimension: cut the box's aspect ratio out of the
        // middle, without scaling (never upscale).
        (true, false) => image.crop_imm(
            (width - target_width) / 2,
            (height - target_height) / 2,
            target_width,
            target_height,
        ),
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

fn decode_error(error: image::ImageError) -> Error {
    match error {
        image::ImageError::Limits(_) => too_large(),
        _ => cannot_thumbnail(),
    }
}

/// JPEG stays JPEG (photos); everything else becomes PNG (keeps transparency).
fn encode(image: &DynamicImage, source: ImageFormat) -> Result<Rendered, Error> {
    let mut bytes = Vec::new();
    let content_type = if source == ImageFormat::Jpeg {
        JpegEncoder::new_with_quality(&mut bytes, 80)
            .encode_image(&image.to_rgb8())
            .map_err(|e| Error::internal(format!("encoding a thumbnail: {e}")))?;
        "image/jpeg"
    } else {
        image
            .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
            .map_err(|e| Error::internal(format!("encoding a thumbnail: {e}")))?;
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
        }
    }

    #[test]
    fn requests_round_up_to_standard_sizes() {
        assert_eq!(
            choose_size(24, 24, Method::Crop),
            size(32, 32, Method::Crop)
        );
        assert_eq!(
            choose_size(40, 20, Method::Crop),
            size(96, 96, Method::Crop)
        );
        assert_eq!(
            choose_size(320, 240, Method::Scale),
            size(320, 240, Method::Scale)
        );
        assert_eq!(
            choose_size(321, 100, Method::Scale),
            size(640, 480, Method::Scale)
        );
        assert_eq!(
            choose_size(1000, 900, Method::Scale),
            size(1280, 960, Method::Scale)
        );
        // Larger than every size: the original.
        assert_eq!(choose_size(4000, 10, Method::Crop).width, MAX_SIDE);
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
    fn non_images_and_bombs_are_refused_before_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("text");
        std::fs::write(&text, b"<html><script>alert(1)</script></html>").unwrap();
        let error = render(&text, size(96, 96, Method::Crop)).err().unwrap();
        assert_eq!(error.status(), http::StatusCode::BAD_REQUEST);

        // A PNG header claiming 60000 x 60000 pixels (3.6 gigapixels) and no pixel data.
        let bomb = dir.path().join("bomb.png");
        std::fs::write(&bomb, png_header(60_000, 60_000)).unwrap();
        let error = render(&bomb, size(96, 96, Method::Crop)).err().unwrap();
        assert_eq!(error.status(), http::StatusCode::PAYLOAD_TOO_LARGE);
    }

    /// A PNG signature and IHDR chunk (8-bit RGBA) for the given dimensions.
    pub(crate) fn png_header(width: u32, height: u32) -> Vec<u8> {
        let mut chunk = b"IHDR".to_vec();
        chunk.extend_from_slice(&width.to_be_bytes());
        chunk.extend_from_slice(&height.to_be_bytes());
        chunk.extend_from_slice(&[8, 6, 0, 0, 0]);
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        out.extend_from_slice(&13u32.to_be_bytes());
        out.extend_from_slice(&chunk);
        out.extend_from_slice(&crc32(&chunk).to_be_bytes());
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
