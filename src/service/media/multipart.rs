//! The `multipart/mixed` answer of the federation media endpoints (server-server API,
//! "Content Repository"): a JSON part (the metadata, `{}`) then the file's part, with its
//! `Content-Type` and `Content-Disposition`.
//!
//! Writing is split into the part before the file ([`head`]) and the part after it
//! ([`tail`]), so the file itself can be streamed from disk between them. Reading is ruma's
//! (`get_content::v1::Response::try_from_http_response`), which also reads a `Location`
//! part; the tests here check that what we write, it reads.

use crate::crypto;

const BOUNDARY_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// A fresh random boundary (32 alphanumerics: it cannot be guessed by whoever uploaded the
/// file, so no file can end the part early).
pub fn boundary() -> String {
    crypto::random_string(32, BOUNDARY_CHARS)
}

/// The answer's own `Content-Type`.
pub fn content_type(boundary: &str) -> String {
    format!("multipart/mixed; boundary={boundary}")
}

/// Everything before the file: the JSON part and the file part's headers.
/// `content_type` and `content_disposition` must be valid header values (no CR or LF).
pub fn head(boundary: &str, content_type: &str, content_disposition: &str) -> Vec<u8> {
    format!(
        "--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n\
         --{boundary}\r\nContent-Type: {content_type}\r\n\
         Content-Disposition: {content_disposition}\r\n\r\n"
    )
    .into_bytes()
}

/// Everything after the file: the closing delimiter.
pub fn tail(boundary: &str) -> Vec<u8> {
    format!("\r\n--{boundary}--\r\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use ruma::api::{
        IncomingResponse,
        federation::authenticated_media::{FileOrLocation, get_content, get_content_thumbnail},
    };

    use super::*;

    fn answer(body: Vec<u8>, boundary: &str) -> http::Response<Bytes> {
        http::Response::builder()
            .header(http::header::CONTENT_TYPE, content_type(boundary))
            .body(Bytes::from(body))
            .unwrap()
    }

    #[test]
    fn what_we_write_ruma_reads_byte_for_byte() {
        let boundary = boundary();
        // A file that looks like multipart itself: line breaks, dashes, a fake delimiter.
        let file = b"\r\n--abc\r\n\r\n--\x00\xff binary \r\n--abc--\r\n".to_vec();
        let mut body = head(&boundary, "image/png", "inline; filename=\"cat.png\"");
        body.extend_from_slice(&file);
        body.extend_from_slice(&tail(&boundary));
        let response =
            get_content::v1::Response::try_from_http_response(answer(body, &boundary)).unwrap();
        let FileOrLocation::File(content) = response.content else {
            panic!("a file, not a location");
        };
        assert_eq!(content.file, file);
        assert_eq!(content.content_type.as_deref(), Some("image/png"));
        assert_eq!(
            content
                .content_disposition
                .and_then(|disposition| disposition.filename),
            Some("cat.png".to_owned())
        );
    }

    #[test]
    fn an_empty_file_and_an_encoded_name_survive() {
        let boundary = boundary();
        let mut body = head(
            &boundary,
            "application/octet-stream",
            "attachment; filename*=utf-8''Gr%C3%BC%C3%9Fe.txt",
        );
        body.extend_from_slice(&tail(&boundary));
        let response =
            get_content_thumbnail::v1::Response::try_from_http_response(answer(body, &boundary))
                .unwrap();
        let FileOrLocation::File(content) = response.content else {
            panic!("a file, not a location");
        };
        assert!(content.file.is_empty());
        assert_eq!(
            content.content_disposition.and_then(|d| d.filename),
            Some("Grüße.txt".to_owned())
        );
    }

    #[test]
    fn boundaries_are_random_and_plain() {
        let (one, two) = (boundary(), boundary());
        assert_ne!(one, two);
        assert!(one.len() >= 30 && one.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(
            content_type(&one),
            format!("multipart/mixed; boundary={one}")
        );
    }
}
