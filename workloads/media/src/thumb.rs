//! Image headers and thumbnails with the `image` crate, bounded: the decoder gets limits on
//! width, height and allocation, so a decompression bomb (a small file that claims a huge
//! canvas) is refused from its header before any pixel is decoded. Decoding runs on the
//! blocking pool under a timeout.

use image::{ImageFormat, ImageReader, Limits};
use std::io::Cursor;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    #[error("the image is {width}x{height}; at most {max}x{max} is accepted")]
    TooLarge { width: u32, height: u32, max: u32 },
    #[error("the image cannot be decoded: {0}")]
    Undecodable(String),
}

/// Types thumbnails are made for.
pub fn thumbnailable(content_type: &str) -> bool {
    matches!(
        content_type,
        "image/png" | "image/jpeg" | "image/gif" | "image/webp"
    )
}

fn limits(max_dim: u32, max_alloc: u64) -> Limits {
    let mut l = Limits::default();
    l.max_image_width = Some(max_dim);
    l.max_image_height = Some(max_dim);
    l.max_alloc = Some(max_alloc);
    l
}

/// Width and height from an image's header (its first bytes). `TooLarge` beyond `max_dim`.
pub fn dimensions(head: &[u8], max_dim: u32) -> Result<(u32, u32), ImageError> {
    let reader = ImageReader::new(Cursor::new(head))
        .with_guessed_format()
        .map_err(|e| ImageError::Undecodable(e.to_string()))?;
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| ImageError::Undecodable(e.to_string()))?;
    if width > max_dim || height > max_dim {
        return Err(ImageError::TooLarge {
            width,
            height,
            max: max_dim,
        });
    }
    Ok((width, height))
}

/// A thumbnail whose longest side is at most `px`: PNG when the image has transparency, JPEG
/// otherwise. Returns the bytes, their type, width and height.
pub fn thumbnail(
    bytes: &[u8],
    px: u32,
    max_dim: u32,
    max_alloc: u64,
) -> Result<(Vec<u8>, &'static str, u32, u32), ImageError> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Undecodable(e.to_string()))?;
    reader.limits(limits(max_dim, max_alloc));
    let img = reader
        .decode()
        .map_err(|e| ImageError::Undecodable(e.to_string()))?;
    let small = img.thumbnail(px, px);
    let (w, h) = (small.width(), small.height());
    let mut out = Cursor::new(Vec::new());
    let content_type = if small.color().has_alpha() {
        small
            .write_to(&mut out, ImageFormat::Png)
            .map_err(|e| ImageError::Undecodable(e.to_string()))?;
        "image/png"
    } else {
        let rgb = image::DynamicImage::ImageRgb8(small.to_rgb8());
        let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80);
        rgb.write_with_encoder(enc)
            .map_err(|e| ImageError::Undecodable(e.to_string()))?;
        "image/jpeg"
    };
    Ok((out.into_inner(), content_type, w, h))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A PNG of `w`x`h` made with the image crate.
    pub(crate) fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 7])
        });
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    /// A valid PNG header claiming `w`x`h` with almost no data: a decompression bomb's shape.
    pub(crate) fn bomb_png(w: u32, h: u32) -> Vec<u8> {
        let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend_from_slice(&w.to_be_bytes());
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        v.extend_from_slice(&13u32.to_be_bytes());
        v.extend_from_slice(&ihdr);
        v.extend_from_slice(&crc32(&ihdr).to_be_bytes());
        // A tiny IDAT (zlib of nothing) and IEND: the header is complete and valid.
        for (kind, data) in [
            (&b"IDAT"[..], &[0x78, 0x9c, 0x03, 0, 0, 0, 0, 1][..]),
            (b"IEND", &[]),
        ] {
            let mut chunk = kind.to_vec();
            chunk.extend_from_slice(data);
            v.extend_from_slice(&(data.len() as u32).to_be_bytes());
            v.extend_from_slice(&chunk);
            v.extend_from_slice(&crc32(&chunk).to_be_bytes());
        }
        v
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn thumbnails_are_small_and_bombs_refused() {
        let p = png(800, 400);
        assert_eq!(dimensions(&p, 10_000).unwrap(), (800, 400));
        let (bytes, ct, w, h) = thumbnail(&p, 100, 10_000, 64 << 20).unwrap();
        assert_eq!((ct, w, h), ("image/jpeg", 100, 50));
        assert_eq!(dimensions(&bytes, 10_000).unwrap(), (100, 50));

        let bomb = bomb_png(100_000, 100_000);
        assert!(matches!(
            dimensions(&bomb, 10_000),
            Err(ImageError::TooLarge { width: 100_000, .. })
        ));
        // Within the dimension limit but beyond the allocation limit: refused, not decoded.
        assert!(thumbnail(&bomb_png(9_000, 9_000), 100, 10_000, 64 << 20).is_err());
        assert!(matches!(
            dimensions(b"not an image", 10),
            Err(ImageError::Undecodable(_))
        ));
    }
}
