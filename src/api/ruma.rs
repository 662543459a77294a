//! The bridge between axum and ruma: the [`Ruma`] extractor (authentication, body limits,
//! JSON checks, parsing into the ruma request type), the [`RumaResponse`] wrapper, and
//! [`RouterExt::ruma_route`], which mounts a handler on every path and method its ruma
//! endpoint metadata lists.

use std::{
    any::TypeId,
    net::{IpAddr, SocketAddr},
    panic::AssertUnwindSafe,
    sync::Arc,
};

use axum::{
    Router,
    body::Body,
    extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Request},
    handler::Handler,
    response::{IntoResponse, Response},
    routing::{MethodFilter, on},
};
use bytes::Bytes;
use http::{Method, header, request::Parts};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use ruma::{
    OwnedDeviceId, OwnedServerName, OwnedUserId,
    api::{
        IncomingRequest, OutgoingResponse,
        auth_scheme::{
            AccessToken, AccessTokenOptional, AppserviceToken, AppserviceTokenOptional,
            NoAccessToken, NoAuthentication,
        },
        client::session::login,
        error::{DeserializationError, ErrorKind, FromHttpRequestError},
        federation::authentication::{ServerSignatures, XMatrix},
        path_builder::PathBuilder,
    },
};
use serde::de::DeserializeOwned;

use crate::{Error, Result, service::Services};

/// Whether an endpoint needs an access token, as its ruma metadata says, or a server's
/// signature (federation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum TokenRule {
    Required,
    Optional,
    Ignored,
    /// An `X-Matrix` signed request from another server.
    Server,
}

/// Maps ruma's authentication schemes onto [`TokenRule`].
pub trait AuthRule {
    const RULE: TokenRule;
}
impl AuthRule for AccessToken {
    const RULE: TokenRule = TokenRule::Required;
}
impl AuthRule for AccessTokenOptional {
    const RULE: TokenRule = TokenRule::Optional;
}
impl AuthRule for NoAccessToken {
    const RULE: TokenRule = TokenRule::Ignored;
}
impl AuthRule for NoAuthentication {
    const RULE: TokenRule = TokenRule::Ignored;
}
// Application services are not supported yet: their tokens are treated as user tokens on
// endpoints that need one, and ignored elsewhere (e.g. `/login`).
impl AuthRule for AppserviceToken {
    const RULE: TokenRule = TokenRule::Required;
}
impl AuthRule for AppserviceTokenOptional {
    const RULE: TokenRule = TokenRule::Ignored;
}
impl AuthRule for ServerSignatures {
    const RULE: TokenRule = TokenRule::Server;
}

/// A parsed, authenticated request of ruma type `T`.
pub struct Ruma<T> {
    pub body: T,
    /// The user and device the access token belongs to, when one was given and checked.
    pub sender: Option<(OwnedUserId, OwnedDeviceId)>,
    /// The server that signed a federation request (its signature checked).
    pub origin: Option<OwnedServerName>,
    /// That server's turn (`Federation::origin_turn`), given back when the handler is done
    /// with the request.
    _origin_turn: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl<T> Ruma<T> {
    /// The authenticated user and device; an error if the request carried no token.
    pub fn sender(&self) -> Result<(&OwnedUserId, &OwnedDeviceId)> {
        self.sender
            .as_ref()
            .map(|(user, device)| (user, device))
            .ok_or_else(|| Error::new(ErrorKind::MissingToken, "Missing access token."))
    }
}

/// The access token from `Authorization: Bearer …` or the deprecated `access_token` query
/// parameter (client-server API, "Using access tokens").
fn access_token(parts: &Parts) -> Result<Option<&str>> {
    if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty());
        return token.map(Some).ok_or_else(|| {
            Error::new(
                ErrorKind::MissingToken,
                "The Authorization header is not a Bearer token.",
            )
        });
    }
    Ok(parts.uri.query().and_then(|query| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("access_token="))
            .filter(|t| !t.is_empty())
    }))
}

/// The client's address: the peer of the connection, which the server puts into each
/// request's extensions as `ConnectInfo<SocketAddr>` (`server::run`). Headers such as
/// `X-Forwarded-For` are not trusted: any client could set them.
fn peer_ip(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| address.ip())
}

async fn authenticate(
    services: &Services,
    parts: &Parts,
    rule: TokenRule,
) -> Result<Option<(OwnedUserId, OwnedDeviceId)>> {
    if matches!(rule, TokenRule::Ignored | TokenRule::Server) {
        return Ok(None);
    }
    match access_token(parts)? {
        None if rule == TokenRule::Required => {
            Err(Error::new(ErrorKind::MissingToken, "Missing access token."))
        }
        None => Ok(None),
        Some(token) => match services.devices.authenticate(token)? {
            // A deactivated account's tokens are dead even if a racing login made one.
            Some(sender)
                if services
                    .users
                    .account(&sender.0)?
                    .is_some_and(|account| !account.deactivated) =>
            {
                services.devices.record_seen(&sender, peer_ip(parts));
                Ok(Some(sender))
            }
            _ => Err(Error::unknown_token("Unknown access token.")),
        },
    }
}

/// Reads the body, refusing more than `max_request_size` bytes with 413 `M_TOO_LARGE`.
async fn read_body(services: &Services, parts: &Parts, body: Body) -> Result<Bytes> {
    let limit = services.config.max_request_size as usize;
    let too_large = || Error::new(ErrorKind::TooLarge, "The request body is too large.");
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok());
    if declared
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|length| length > limit as u64)
    {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(_) => Err(Error::bad_json("The request body could not be read.")),
    }
}

/// Checks a body read by [`read_body`]: one that is not JSON is 400 `M_NOT_JSON`, and JSON
/// that is not an object 400 `M_BAD_JSON` (every request body in the client-server API is an
/// object; serde would otherwise read a struct from an array, field by field, as Synapse
/// does not). An empty body reads as `{}` (except for GET), which is what clients mean when
/// they send nothing to a POST endpoint.
fn check_json(parts: &Parts, bytes: Bytes) -> Result<Bytes> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(if parts.method == Method::GET {
            Bytes::new()
        } else {
            Bytes::from_static(b"{}")
        });
    }
    if serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err() {
        return Err(Error::new(
            ErrorKind::NotJson,
            "The request body is not valid JSON.",
        ));
    }
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Error::bad_json("The request body must be a JSON object."));
    }
    Ok(bytes)
}

async fn read_json_body(services: &Services, parts: &Parts, body: Body) -> Result<Bytes> {
    let bytes = read_body(services, parts, body).await?;
    check_json(parts, bytes)
}

/// How long checking a request may wait for the origin's key to be fetched.
const KEY_LOOKUP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(15);

/// Checks a federation request's `X-Matrix` signature (server-server API, "Request
/// Authentication") against the origin's keys, over the body as it was sent, and returns
/// the origin. Any failure is `401 M_UNAUTHORIZED`.
async fn authenticate_server(
    services: &Services,
    parts: &Parts,
    body: &Bytes,
) -> Result<OwnedServerName> {
    let unauthorized = |message: &str| Error::new(ErrorKind::Unauthorized, message);
    let header = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("Missing X-Matrix authorization."))?;
    let x_matrix = XMatrix::try_from(header)
        .map_err(|_| unauthorized("The Authorization header is not a valid X-Matrix header."))?;
    let ours = &services.config.server_name;
    if x_matrix
        .destination
        .as_ref()
        .is_some_and(|destination| destination != ours)
    {
        return Err(unauthorized(
            "The request is for another server (destination).",
        ));
    }
    if x_matrix.origin == *ours {
        return Err(unauthorized("The request claims to come from this server."));
    }
    // Keys valid now: old (expired) keys only ever verify events signed before they expired.
    // A key not yet known is fetched; a server that answers slowly (or never) must not hold
    // the request, so the whole lookup has a deadline.
    let keys = tokio::time::timeout(
        KEY_LOOKUP_DEADLINE,
        services.keyring.verify_keys(
            &x_matrix.origin,
            std::slice::from_ref(&x_matrix.key),
            Some(ruma::MilliSecondsSinceUnixEpoch::now()),
        ),
    )
    .await
    .unwrap_or_else(|_| Err(Error::internal("key lookup timed out")))
    .map_err(|error| {
        tracing::debug!(origin = %x_matrix.origin, %error, "no key to check a request");
        unauthorized("The origin's signing key could not be found.")
    })?;
    if !keys.contains_key(x_matrix.key.as_str()) {
        return Err(unauthorized("The origin's signing key could not be found."));
    }
    let keys = ruma::signatures::PublicKeyMap::from([(x_matrix.origin.to_string(), keys)]);
    let mut request = http::Request::new(body.as_ref());
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    x_matrix
        .verify_request(&request, ours, &keys)
        .map_err(|_| unauthorized("The X-Matrix signature is not valid."))?;
    // It is up: anything waiting for it goes now.
    if let Some(sender) = services.federation.sender() {
        sender.heard_from(&x_matrix.origin);
    }
    Ok(x_matrix.origin)
}

/// ruma's parse errors: bad query or path → `M_INVALID_PARAM`, bad body → `M_BAD_JSON`.
fn parse_error(error: FromHttpRequestError) -> Error {
    match error {
        FromHttpRequestError::Deserialization(DeserializationError::Json(error)) => {
            Error::bad_json(format!("Invalid request body: {error}"))
        }
        FromHttpRequestError::Deserialization(DeserializationError::Query(error))
            if error.to_string().contains("missing field") =>
        {
            Error::new(
                ErrorKind::MissingParam,
                format!("Missing parameter: {error}"),
            )
        }
        FromHttpRequestError::Deserialization(
            error @ (DeserializationError::Query(_)
            | DeserializationError::Ident(_)
            | DeserializationError::Header(_)),
        ) => Error::invalid_param(format!("Invalid parameter: {error}")),
        FromHttpRequestError::MethodMismatch { .. } => Error::with_status(
            http::StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::Unrecognized,
            "Method not allowed for this endpoint.",
        ),
        other => Error::bad_json(format!("Invalid request: {other}")),
    }
}

/// Inputs on which ruma's own parser panics instead of failing, refused before it runs.
fn check_before_parse<T: 'static>(body: &[u8]) -> Result<()> {
    // ruma-client-api 0.24 reads the login body's `type` with `data["type"]`, which panics
    // when the field is missing (e.g. `POST /login` with `{}`).
    if TypeId::of::<T>() == TypeId::of::<login::v3::Request>() {
        let has_type = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body)
            .map_or(true, |object| object.contains_key("type"));
        if !has_type {
            return Err(Error::new(
                ErrorKind::MissingParam,
                "Missing parameter: the login `type`.",
            ));
        }
    }
    Ok(())
}

/// ruma's `try_from_http_request`, which must never take the server down with it: a panic in
/// ruma's parsing (a bug there, for some input) is caught here and answered as a bad request
/// rather than reaching the panic guard's 500. The panic hook has already logged it.
fn parse<T: IncomingRequest>(request: http::Request<Bytes>, path_args: &[String]) -> Result<T> {
    let path = request.uri().path().to_owned();
    match std::panic::catch_unwind(AssertUnwindSafe(|| {
        T::try_from_http_request(request, path_args)
    })) {
        Ok(parsed) => parsed.map_err(parse_error),
        Err(_) => {
            tracing::error!(%path, "ruma panicked while parsing a request");
            Err(Error::bad_json("The request could not be parsed."))
        }
    }
}

impl<T> FromRequest<Arc<Services>> for Ruma<T>
where
    T: IncomingRequest + Send + 'static,
    T::Authentication: AuthRule,
{
    type Rejection = Error;

    async fn from_request(request: Request, services: &Arc<Services>) -> Result<Self> {
        let (mut parts, body) = request.into_parts();
        let Path(path_args): Path<Vec<String>> = Path::from_request_parts(&mut parts, services)
            .await
            .map_err(|_| Error::invalid_param("Invalid path parameter."))?;
        let sender = authenticate(services, &parts, T::Authentication::RULE).await?;
        let bytes = read_body(services, &parts, body).await?;
        let origin = match T::Authentication::RULE {
            TokenRule::Server => Some(authenticate_server(services, &parts, &bytes).await?),
            _ => None,
        };
        let origin_turn = match &origin {
            Some(origin) => Some(services.federation.origin_turn(origin)?),
            None => None,
        };
        let bytes = check_json(&parts, bytes)?;
        check_before_parse::<T>(&bytes)?;
        let body = parse::<T>(http::Request::from_parts(parts, bytes), &path_args)?;
        Ok(Self {
            body,
            sender,
            origin,
            _origin_turn: origin_turn,
        })
    }
}

/// The user and device of a required access token, for handlers that read the body
/// themselves (media uploads stream it) and so cannot use [`Ruma`].
pub struct Authenticated(pub OwnedUserId, pub OwnedDeviceId);

impl FromRequestParts<Arc<Services>> for Authenticated {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, services: &Arc<Services>) -> Result<Self> {
        let (user, device) = authenticate(services, parts, TokenRule::Required)
            .await?
            .ok_or_else(|| Error::new(ErrorKind::MissingToken, "Missing access token."))?;
        Ok(Self(user, device))
    }
}

/// A plain JSON body for the few endpoints ruma has no type for (Synapse's admin API), with
/// the same limits and errcodes as [`Ruma`].
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<Services>> for JsonBody<T> {
    type Rejection = Error;

    async fn from_request(request: Request, services: &Arc<Services>) -> Result<Self> {
        let (parts, body) = request.into_parts();
        let bytes = read_json_body(services, &parts, body).await?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|error| Error::bad_json(format!("Invalid request: {error}")))
    }
}

/// A ruma response, serialised with its status and headers.
pub struct RumaResponse<T>(pub T);

impl<T: OutgoingResponse> IntoResponse for RumaResponse<T> {
    fn into_response(self) -> Response {
        match self.0.try_into_http_response::<Vec<u8>>() {
            Ok(response) => response.map(Body::from).into_response(),
            Err(error) => {
                Error::internal(format!("response serialisation: {error}")).into_response()
            }
        }
    }
}

/// The last path segment of endpoints that take a state key.
const STATE_KEY_SEGMENT: &str = "/{state_key}";

/// The router under construction, together with the method and path of every route added
/// to it, so that [`super::route_list`] lists exactly what the router answers, with no
/// second, hand-kept list.
pub struct Routes {
    router: Router<Arc<Services>>,
    list: Vec<(Method, String)>,
}

impl Default for Routes {
    fn default() -> Self {
        Self::new()
    }
}

impl Routes {
    pub fn new() -> Self {
        Self {
            router: Router::new(),
            list: Vec::new(),
        }
    }

    /// Routes `method` on `path` to a handler that is not a ruma endpoint (media streams the
    /// body; Synapse's admin API has no ruma type).
    pub fn on<H, X>(mut self, method: Method, path: &str, handler: H) -> Self
    where
        H: Handler<X, Arc<Services>>,
        X: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).expect("a standard method");
        self.router = self.router.route(path, on(filter, handler));
        self.list.push((method, path.to_owned()));
        self
    }

    pub fn merge(mut self, other: Routes) -> Self {
        self.router = self.router.merge(other.router);
        self.list.extend(other.list);
        self
    }

    /// Changes the router (e.g. adds a `route_layer`) without changing its routes.
    pub fn map_router(
        mut self,
        f: impl FnOnce(Router<Arc<Services>>) -> Router<Arc<Services>>,
    ) -> Self {
        self.router = f(self.router);
        self
    }

    pub fn into_parts(self) -> (Router<Arc<Services>>, Vec<(Method, String)>) {
        (self.router, self.list)
    }
}

/// Mounting handlers by their ruma request type.
pub trait RouterExt {
    /// Routes every path in `T`'s metadata, with `T`'s method, to `handler`.
    fn ruma_route<T, H, Fut, R>(self, handler: H) -> Self
    where
        T: IncomingRequest + Send + 'static,
        T::Authentication: AuthRule,
        H: FnOnce(axum::extract::State<Arc<Services>>, Ruma<T>) -> Fut
            + Clone
            + Send
            + Sync
            + 'static,
        Fut: Future<Output = Result<R>> + Send + 'static,
        R: IntoResponse + 'static;
}

impl RouterExt for Routes {
    fn ruma_route<T, H, Fut, R>(mut self, handler: H) -> Self
    where
        T: IncomingRequest + Send + 'static,
        T::Authentication: AuthRule,
        H: FnOnce(axum::extract::State<Arc<Services>>, Ruma<T>) -> Fut
            + Clone
            + Send
            + Sync
            + 'static,
        Fut: Future<Output = Result<R>> + Send + 'static,
        R: IntoResponse + 'static,
    {
        for path in T::PATH_BUILDER.all_paths() {
            self = self.on(T::METHOD, path, handler.clone());
            // An empty state key makes a path end in `/` or lose its last segment; clients
            // send both forms (`/state/m.room.name/`, `/state/m.room.name`).
            if let Some(prefix) = path.strip_suffix(STATE_KEY_SEGMENT) {
                self = self.on(T::METHOD, prefix, handler.clone());
                self = self.on(T::METHOD, &format!("{prefix}/"), handler.clone());
            }
        }
        self
    }
}
