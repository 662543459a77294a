//! URL previews (`GET /preview_url`): fetch a public web page and read its OpenGraph tags.
//!
//! Off unless `allow_url_preview` is set. A preview makes the *server* fetch a URL a user
//! chose, so it must never reach what only the server can reach (the NAS admin page, the
//! router, cloud metadata endpoints): every address a host name resolves to must be public
//! ([`is_public_address`]), the connection goes to exactly the addresses that were checked
//! (no second DNS lookup to rebind), no proxy is used, and each redirect is checked the
//! same way. Bodies are read up to [`MAX_BODY`]; only HTML is parsed.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use reqwest::{Url, header, redirect};
use ruma::api::error::ErrorKind;
use serde_json::{Map, Value};

use crate::Error;

/// The OpenGraph fields of a page (`og:title`, `og:description`, …).
pub type Preview = Map<String, Value>;

const MAX_BODY: usize = 512 * 1024;
const MAX_REDIRECTS: usize = 3;
const MAX_VALUE_CHARS: usize = 1_000;
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub enum PreviewError {
    Disabled,
    BadUrl(String),
    /// The URL leads to a private, loopback or otherwise non-public address.
    Blocked(String),
    Fetch(String),
}

impl PreviewError {
    pub fn into_error(self) -> Error {
        match self {
            // As when the endpoint does not exist (Synapse without previews): clients then
            // simply show no preview.
            Self::Disabled => Error::new(
                ErrorKind::Unrecognized,
                "URL previews are disabled on this server.",
            ),
            Self::BadUrl(why) => Error::invalid_param(format!("Cannot preview this URL: {why}")),
            Self::Blocked(why) => Error::forbidden(format!("Cannot preview this URL: {why}")),
            Self::Fetch(why) => Error::with_status(
                http::StatusCode::BAD_GATEWAY,
                ErrorKind::Unknown,
                format!("Cannot preview this URL: {why}"),
            ),
        }
    }
}

/// Whether `ip` is an ordinary public unicast address (not loopback, private, link-local,
/// shared (CGNAT), documentation, benchmarking, multicast, reserved or unspecified, and no
/// IPv6 form that embeds such an IPv4 address).
pub fn is_public_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let segments = ip.segments();
    let embedded_v4 = |high: u16, low: u16| {
        Ipv4Addr::new((high >> 8) as u8, high as u8, (low >> 8) as u8, low as u8)
    };
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) reach the embedded IPv4 address.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded_v4(segments[6], segments[7]));
    }
    if segments[0] == 0x2002 {
        return is_public_v4(embedded_v4(segments[1], segments[2]));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00 // unique local
        || (segments[0] & 0xffc0) == 0xfe80 // link-local
        || (segments[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation
        || (segments[0] == 0x2001 && segments[1] == 0) // Teredo
        || segments[..3] == [0x64, 0xff9b, 1] // local-use NAT64 (RFC 8215)
        || (segments[0] == 0x2001 && segments[1] == 2 && segments[2] == 0) // benchmarking
        || (segments[0] == 0x2001 && (segments[1] & 0xfff0) == 0x10) // ORCHID
        || (segments[0] == 0x2001 && (segments[1] & 0xfff0) == 0x20) // ORCHIDv2
        || segments[..4] == [0x100, 0, 0, 0] // discard-only
        || segments[..5] == [0, 0, 0, 0, 0]) // IPv4-compatible and other ::/80 forms
}

/// Fetches `url` (following up to [`MAX_REDIRECTS`] checked redirects) and reads its preview.
pub async fn fetch(url: &str) -> Result<Preview, PreviewError> {
    fetch_with(url, &|address| is_public_address(address.ip())).await
}

/// [`fetch`] with the address check as a parameter, so tests can let one loopback port
/// through and check that everything else, redirects included, is still refused.
async fn fetch_with(
    url: &str,
    allowed: &(dyn Fn(SocketAddr) -> bool + Sync),
) -> Result<Preview, PreviewError> {
    let mut url = Url::parse(url).map_err(|e| PreviewError::BadUrl(e.to_string()))?;
    for _ in 0..=MAX_REDIRECTS {
        let addresses = checked_addresses(&url, allowed).await?;
        let mut builder = reqwest::Client::builder()
            .redirect(redirect::Policy::none())
            .no_proxy()
            .timeout(TIMEOUT)
            .user_agent("conduit (Matrix URL preview)");
        if let Some(domain) = url.domain() {
            builder = builder.resolve_to_addrs(domain, &addresses);
        }
        let client = builder
            .build()
            .map_err(|e| PreviewError::Fetch(e.to_string()))?;
        let response = client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| PreviewError::Fetch(e.without_url().to_string()))?;
        if response.status().is_redirection() {
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|value| value.to_str().ok())
                .ok_or_else(|| PreviewError::Fetch("redirect without a location".into()))?;
            url = url
                .join(location)
                .map_err(|e| PreviewError::Fetch(format!("bad redirect: {e}")))?;
            continue;
        }
        if !response.status().is_success() {
            return Err(PreviewError::Fetch(format!(
                "the page answered {}",
                response.status()
            )));
        }
        let is_html = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.to_ascii_lowercase().contains("html"));
        if !is_html {
            return Ok(Preview::new());
        }
        let mut body = Vec::new();
        let mut response = response;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| PreviewError::Fetch(e.without_url().to_string()))?
        {
            let room = MAX_BODY - body.len();
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() >= MAX_BODY {
                break;
            }
        }
        return Ok(parse_html_preview(&String::from_utf8_lossy(&body)));
    }
    Err(PreviewError::Fetch("too many redirects".into()))
}

/// The addresses `url` leads to, all of them public, or why not.
pub(super) async fn checked_addresses(
    url: &Url,
    allowed: &(dyn Fn(SocketAddr) -> bool + Sync),
) -> Result<Vec<SocketAddr>, PreviewError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(PreviewError::BadUrl("only http and https URLs".into()));
    }
    let port = url
        .port_or_known_default()
        .ok_or_else(|| PreviewError::BadUrl("no port".into()))?;
    let addresses: Vec<SocketAddr> = match url.domain() {
        Some(domain) => tokio::net::lookup_host((domain, port))
            .await
            .map_err(|e| PreviewError::Fetch(format!("cannot resolve {domain}: {e}")))?
            .collect(),
        None => {
            let host = url
                .host_str()
                .ok_or_else(|| PreviewError::BadUrl("no host".into()))?;
            let ip: IpAddr = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .map_err(|_| PreviewError::BadUrl("unreadable host".into()))?;
            vec![SocketAddr::new(ip, port)]
        }
    };
    if addresses.is_empty() {
        return Err(PreviewError::Fetch("the host has no address".into()));
    }
    if let Some(address) = addresses.iter().find(|a| !allowed(**a)) {
        return Err(PreviewError::Blocked(format!(
            "it leads to a non-public address ({})",
            address.ip()
        )));
    }
    Ok(addresses)
}

/// The OpenGraph tags of an HTML page, with `<title>` and `<meta name="description">` as
/// fallbacks for `og:title` and `og:description`. `og:image` is left out: the spec wants an
/// `mxc://` URI there, and images are not fetched.
pub fn parse_html_preview(html: &str) -> Preview {
    let mut preview = Preview::new();
    let lower = html.to_ascii_lowercase();
    let mut description = None;
    let mut at = 0;
    while let Some(found) = lower[at..].find("<meta") {
        let start = at + found + 5;
        let end = lower[start..].find('>').map_or(html.len(), |e| start + e);
        let attributes = parse_attributes(&html[start..end]);
        let get = |name: &str| {
            attributes
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.as_str())
        };
        if let (Some(property), Some(content)) = (get("property").or(get("name")), get("content")) {
            let property = property.to_ascii_lowercase();
            if property.starts_with("og:") && !property.starts_with("og:image") {
                preview
                    .entry(property)
                    .or_insert_with(|| Value::String(clip(content)));
            } else if property == "description" {
                description.get_or_insert_with(|| clip(content));
            }
        }
        at = end;
    }
    if !preview.contains_key("og:title")
        && let Some(start) = lower.find("<title")
        && let Some(open_end) = lower[start..].find('>')
    {
        let text_start = start + open_end + 1;
        let text_end = lower[text_start..]
            .find("</title")
            .map_or(html.len(), |e| text_start + e);
        let title = decode_entities(html[text_start..text_end].trim());
        if !title.is_empty() {
            preview.insert("og:title".into(), Value::String(clip(&title)));
        }
    }
    if let Some(description) = description {
        preview
            .entry("og:description")
            .or_insert(Value::String(description));
    }
    preview
}

fn clip(value: &str) -> String {
    value.chars().take(MAX_VALUE_CHARS).collect()
}

/// `key="value"`, `key='value'` and `key=value` pairs of a tag, entities decoded.
fn parse_attributes(tag: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = tag;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '/');
        let name_end = rest
            .find(|c: char| c.is_whitespace() || c == '=' || c == '>')
            .unwrap_or(rest.len());
        if name_end == 0 {
            return out;
        }
        let name = &rest[..name_end];
        rest = rest[name_end..].trim_start();
        let Some(after_equals) = rest.strip_prefix('=') else {
            out.push((name.to_owned(), String::new()));
            continue;
        };
        rest = after_equals.trim_start();
        let (value, remaining) = match rest.chars().next() {
            Some(quote @ ('"' | '\'')) => {
                let body = &rest[1..];
                let end = body.find(quote).unwrap_or(body.len());
                (&body[..end], body.get(end + 1..).unwrap_or(""))
            }
            _ => {
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                (&rest[..end], &rest[end..])
            }
        };
        out.push((name.to_owned(), decode_entities(value)));
        rest = remaining;
    }
}

fn decode_entities(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        // Byte search: `;` is ASCII, so its position is always a character boundary.
        let Some(semi) = rest.bytes().take(12).position(|b| b == b';') else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "nbsp" => Some('\u{a0}'),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public_ip(address: &str) -> bool {
        is_public_address(address.parse().unwrap())
    }

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for address in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.178.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:192.168.1.1",
            "64:ff9b::a00:1",
            "2002:c0a8:0101::1",
            "2001:db8::1",
            "::127.0.0.1",
            "64:ff9b:1::a00:1",
            "2001:2::1",
            "2001:10::1",
            "2001:20::1",
        ] {
            assert!(!public_ip(address), "{address} must be refused");
        }
        for address in [
            "1.1.1.1",
            "93.184.216.34",
            "2a00:1450:4001:82a::200e",
            "::ffff:8.8.8.8",
        ] {
            assert!(public_ip(address), "{address} is public");
        }
    }

    fn public(address: SocketAddr) -> bool {
        is_public_address(address.ip())
    }

    #[tokio::test]
    async fn loopback_and_private_urls_are_refused_without_a_connection() {
        for url in [
            "http://127.0.0.1:1/",
            "http://[::1]:1/",
            "http://localhost:1/",
            "http://192.168.0.1/",
            "http://[::ffff:7f00:1]/",
        ] {
            let result = checked_addresses(&Url::parse(url).unwrap(), &public).await;
            assert!(
                matches!(result, Err(PreviewError::Blocked(_))),
                "{url}: {result:?}"
            );
        }
        let result = checked_addresses(&Url::parse("file:///etc/passwd").unwrap(), &public).await;
        assert!(matches!(result, Err(PreviewError::BadUrl(_))));
    }

    #[test]
    fn opengraph_tags_are_read() {
        let html = r#"<html><head>
            <title>Fallback &amp; title</title>
            <meta property="og:title" content="The &quot;real&quot; title">
            <meta content='A description' property='og:description' />
            <meta property="og:image" content="http://10.0.0.1/secret.png">
            <META NAME="description" CONTENT="ignored, og:description wins">
            </head></html>"#;
        let preview = parse_html_preview(html);
        assert_eq!(preview["og:title"], "The \"real\" title");
        assert_eq!(preview["og:description"], "A description");
        assert!(!preview.contains_key("og:image"));
    }

    #[test]
    fn multibyte_text_next_to_ampersands_does_not_panic() {
        let preview = parse_html_preview("<title>Q&Aコーナー &amp; ü&#x1F600;</title>");
        assert_eq!(preview["og:title"], "Q&Aコーナー & ü😀");
        let preview = parse_html_preview("<meta property='og:title' content='&ー&'>");
        assert_eq!(preview["og:title"], "&ー&");
    }

    /// A one-shot HTTP server on loopback answering every request with `response`.
    async fn serve_once(response: String) -> (u16, tokio::task::JoinHandle<bool>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let Ok(Ok((mut stream, _))) =
                tokio::time::timeout(Duration::from_secs(5), listener.accept()).await
            else {
                return false;
            };
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer).await;
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
            true
        });
        (port, task)
    }

    #[tokio::test]
    async fn a_redirect_to_a_refused_address_is_not_followed() {
        // The "private" target: it must never be connected to.
        let private = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let private_port = private.local_addr().unwrap().port();
        let (port, served) = serve_once(format!(
            "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{private_port}/admin\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        ))
        .await;
        // Only the redirecting server's port counts as allowed.
        let allowed = move |address: SocketAddr| address.port() == port;
        let result = fetch_with(&format!("http://127.0.0.1:{port}/"), &allowed).await;
        assert!(
            matches!(result, Err(PreviewError::Blocked(_))),
            "{result:?}"
        );
        assert!(served.await.unwrap(), "the first hop was fetched");
        let reached = tokio::time::timeout(Duration::from_millis(100), private.accept()).await;
        assert!(reached.is_err(), "the redirect target was contacted");
    }

    #[tokio::test]
    async fn an_allowed_page_is_fetched_and_parsed() {
        let body = "<html><head><meta property=\"og:title\" content=\"Club night\">\
                    <meta name=\"description\" content=\"Fridays at eight\"></head></html>";
        let (port, _) = serve_once(format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ))
        .await;
        let allowed = move |address: SocketAddr| address.port() == port;
        let preview = fetch_with(&format!("http://127.0.0.1:{port}/event"), &allowed)
            .await
            .unwrap();
        assert_eq!(preview["og:title"], "Club night");
        assert_eq!(preview["og:description"], "Fridays at eight");
    }

    #[test]
    fn title_and_description_are_fallbacks() {
        let html = "<title> Caf&#233; &lt;3 </title><meta name=description content=Plain>";
        let preview = parse_html_preview(html);
        assert_eq!(preview["og:title"], "Café <3");
        assert_eq!(preview["og:description"], "Plain");
        assert!(parse_html_preview("<p>no head</p>").is_empty());
    }
}
