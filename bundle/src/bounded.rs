//! Bounded reads of registry manifests, referrers lists and registry tokens.
//!
//! Why this exists: oci-client reads every response body whole (`res.bytes()` for manifests
//! and referrers, `text()` for the token exchange). The registry is named by a tenant, so a
//! hostile registry can stream gigabytes into the operator's memory well within the request
//! timeout. Here every body is read with a cap: a declared `Content-Length` above the cap is
//! refused before a byte is read, and otherwise the body is read chunk by chunk and the read
//! stops as soon as the cap is passed, so at most `limit` bytes plus one transport chunk are
//! ever held.
//!
//! Errors are reported as oci-client's [`OciDistributionError`] (status mapping as in its
//! `validate_registry_response`), so callers keep classifying "not found", "unauthorized" and
//! transport errors as they did; only an oversized body gets its own variant,
//! [`BoundedError::TooLarge`].
//!
//! Secrets: tokens and passwords are only ever put into request headers (which reqwest marks
//! sensitive). They never appear in an error, and [`BoundedReader`]'s `Debug` shows no token.
//! Text that comes from the registry (error bodies, token service answers, envelope messages)
//! is cut to [`MESSAGE_CHARS`] characters with control characters blanked, because it comes
//! from a stranger and ends up in logs and Kubernetes status fields.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use oci_client::Reference;
use oci_client::errors::{DigestError, OciDistributionError, OciEnvelope, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use reqwest::header::{ACCEPT, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode, Url};
use sha2::Digest as _;

/// Cap on error bodies and token service answers: enough for any real OCI error envelope or
/// token (JWTs of a few KiB), far too little to hurt.
pub const SMALL_BODY_LIMIT: u64 = 64 * 1024;

/// Longest registry-supplied text kept in an error, in characters.
pub const MESSAGE_CHARS: usize = 200;

/// Media type of the referrers API's answer (an OCI image index).
pub const REFERRERS_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// The token lifetime the distribution token spec says to assume when `expires_in` is absent.
const DEFAULT_TOKEN_SECONDS: u64 = 60;

/// A token is dropped from the cache this long before it expires, so that a request never
/// leaves with a token that lapses on its way.
const TOKEN_MARGIN: Duration = Duration::from_secs(10);

/// A hostile token service cannot make us keep a token for longer than this.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// Bounds on the token cache: tenants choose registries and repositories, so the number of
/// cache keys is theirs to choose too, and a hostile token service chooses the tokens' size.
/// Expired entries are swept first; past a bound the entries closest to expiry go (of the
/// same registry for the per-registry bound, so a registry with many repositories only
/// evicts its own tokens). An evicted token is merely fetched again.
const MAX_CACHED_TOKENS: usize = 1024;
/// Tokens of one registry kept at most.
const MAX_TOKENS_PER_REGISTRY: usize = 64;
/// A longer token is used for its request but not kept (real ones are a few KiB).
const MAX_CACHED_TOKEN_BYTES: usize = 16 * 1024;
/// Bytes of tokens kept at most, all registries together.
const MAX_TOKEN_CACHE_BYTES: usize = 2 * 1024 * 1024;

/// Bound on the set of registries known to answer with a Basic challenge, for the same reason.
const MAX_BASIC_REGISTRIES: usize = 1024;

/// At most this many errors of a registry's error envelope are kept.
const MAX_ENVELOPE_ERRORS: usize = 8;

/// Errors of [`BoundedReader`].
#[derive(Debug, thiserror::Error)]
pub enum BoundedError {
    /// More than `limit` bytes (by Content-Length, or counted while reading): reading stopped
    /// there.
    #[error("the registry's {what} is larger than {limit} bytes")]
    TooLarge {
        /// What was being read: "manifest", "referrers", or the name a caller gave a blob.
        what: &'static str,
        /// The cap that was passed.
        limit: u64,
    },
    /// Everything else, as oci-client reports it, so callers keep classifying errors as today.
    #[error(transparent)]
    Registry(#[from] OciDistributionError),
}

impl From<DigestError> for BoundedError {
    fn from(error: DigestError) -> Self {
        BoundedError::Registry(error.into())
    }
}

impl From<reqwest::Error> for BoundedError {
    fn from(error: reqwest::Error) -> Self {
        BoundedError::Registry(OciDistributionError::RequestError(error))
    }
}

/// Reads manifests and referrers lists from OCI registries without ever holding more than a
/// caller-chosen number of bytes of a registry's answer.
pub struct BoundedReader {
    client: reqwest::Client,
    /// `host:port` entries reached over plain http.
    insecure: Vec<String>,
    /// Bearer tokens obtained from token services, per registry, repository and credentials.
    tokens: Mutex<HashMap<TokenKey, CachedToken>>,
    /// Registries that answered with a Basic challenge: with Basic credentials they are sent
    /// up front next time, saving the anonymous round trip.
    basic_registries: Mutex<HashSet<String>>,
}

impl fmt::Debug for BoundedReader {
    /// Shows no token: only the insecure list and how many tokens are cached.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedReader")
            .field("insecure", &self.insecure)
            .field("cached_tokens", &lock(&self.tokens).len())
            .finish_non_exhaustive()
    }
}

/// Key of the token cache. The credentials are part of it (as a hash): a token obtained with
/// one tenant's credentials must never serve a request made with another's (or anonymously).
#[derive(Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    registry: String,
    repository: String,
    credentials: [u8; 32],
}

impl TokenKey {
    fn new(registry: &str, repository: &str, auth: &RegistryAuth) -> Self {
        // Each field is length-prefixed, so no two credential pairs hash alike (a user name
        // holding a NUL cannot pose as another user/password split).
        let mut hasher = sha2::Sha256::new();
        let mut field = |bytes: &[u8]| {
            hasher.update((bytes.len() as u64).to_be_bytes());
            hasher.update(bytes);
        };
        match auth {
            RegistryAuth::Basic(user, password) => {
                field(b"basic");
                field(user.as_bytes());
                field(password.as_bytes());
            }
            RegistryAuth::Bearer(token) => {
                field(b"bearer");
                field(token.as_bytes());
            }
            RegistryAuth::Anonymous => field(b"anonymous"),
        }
        TokenKey {
            registry: registry.to_string(),
            repository: repository.to_string(),
            credentials: hasher.finalize().into(),
        }
    }
}

/// A token and the instant it stops being used.
struct CachedToken {
    token: String,
    until: Instant,
}

/// What a request carries in its Authorization header.
enum Credential<'a> {
    Nothing,
    Bearer(&'a str),
    Basic(&'a str, &'a str),
}

/// The challenge of a 401 answer we know how to meet.
#[derive(Debug, PartialEq, Eq)]
enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
    },
    Basic,
}

/// A token service's answer (distribution token auth; `access_token` is the OAuth2 name).
#[derive(serde::Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    /// Lenient: anything but a non-negative integer means "use the default".
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

impl BoundedReader {
    /// `insecure`: `host:port` entries reached over plain http (as oci-client's
    /// `ClientProtocol::HttpsExcept`).
    ///
    /// Only a connect timeout is set: the whole call's deadline is the caller's (it wraps calls
    /// in `tokio::time::timeout`). Redirects are followed at most 5 times; reqwest drops the
    /// Authorization header when a redirect changes host, port or scheme.
    pub fn new(insecure: Vec<String>) -> Result<Self, BoundedError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()?;
        Ok(BoundedReader {
            client,
            insecure,
            tokens: Mutex::new(HashMap::new()),
            basic_registries: Mutex::new(HashSet::new()),
        })
    }

    /// GET `{scheme}://{registry}/v2/{repository}/manifests/{digest or tag}` with `Accept` =
    /// `accept` joined by ", ". Returns the body and its digest. When `reference` has a digest,
    /// the body must hash to it (else a `DigestError`), and that digest is returned; otherwise
    /// the digest is `sha256:<hex of body>`.
    ///
    /// The registry's `Docker-Content-Digest` header is not consulted: for a digest reference
    /// the reference is what must hold, and for a tag the body's own hash is the truth.
    pub async fn manifest(
        &self,
        reference: &Reference,
        auth: &RegistryAuth,
        accept: &[&str],
        limit: u64,
    ) -> Result<(Vec<u8>, String), BoundedError> {
        let url = self.manifest_url(reference);
        let response = self
            .authorized(reference, auth, Method::GET, &url, &accept.join(", "))
            .await?;
        let response = check_status(response, &url).await?;
        let body = read_capped(response, limit, "manifest").await?;
        let digest = match reference.digest() {
            Some(expected) => verify_digest(&body, expected)?,
            None => format!("sha256:{}", hex::encode(sha2::Sha256::digest(&body))),
        };
        Ok((body, digest))
    }

    /// GET `/v2/{repository}/referrers/{digest}` (Accept: an OCI image index). `Ok(None)` on
    /// 404, which the distribution spec defines as "this registry has no referrers API" (the
    /// caller falls back to the referrers tag schema); the raw body otherwise.
    pub async fn referrers(
        &self,
        subject: &Reference,
        auth: &RegistryAuth,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, BoundedError> {
        let digest = subject.digest().ok_or_else(|| {
            OciDistributionError::GenericError(Some(
                "Getting referrers for a tag is not supported".into(),
            ))
        })?;
        let registry = subject.resolve_registry();
        let url = format!(
            "{scheme}://{registry}/v2/{repository}/referrers/{digest}",
            scheme = self.scheme_for(registry),
            repository = subject.repository(),
        );
        let response = self
            .authorized(subject, auth, Method::GET, &url, REFERRERS_MEDIA_TYPE)
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = check_status(response, &url).await?;
        read_capped(response, limit, "referrers").await.map(Some)
    }

    /// GET `/v2/{repository}/blobs/{digest}`: the blob of `reference`'s repository, read up to
    /// `limit` bytes and checked against `digest` (`what` names it in a [`BoundedError::TooLarge`]).
    /// Registries often answer with a redirect to storage on another host; reqwest follows it
    /// without the Authorization header.
    pub async fn blob(
        &self,
        reference: &Reference,
        digest: &str,
        auth: &RegistryAuth,
        (what, limit): (&'static str, u64),
    ) -> Result<Vec<u8>, BoundedError> {
        // The digest goes into the request path: only `algorithm:hex` of a known algorithm.
        let (algorithm, hex_digest) = digest
            .split_once(':')
            .ok_or(DigestError::MissingAlgorithm)?;
        if !matches!(algorithm, "sha256" | "sha384" | "sha512")
            || hex_digest.is_empty()
            || !hex_digest.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(DigestError::UnsupportedAlgorithm(cut(digest)).into());
        }
        let registry = reference.resolve_registry();
        let url = format!(
            "{scheme}://{registry}/v2/{repository}/blobs/{digest}{ns}",
            scheme = self.scheme_for(registry),
            repository = reference.repository(),
            ns = namespace_query(reference),
        );
        let response = self
            .authorized(reference, auth, Method::GET, &url, "")
            .await?;
        let response = check_status(response, &url).await?;
        let body = read_capped(response, limit, what).await?;
        verify_digest(&body, digest)?;
        Ok(body)
    }

    /// The digest of the manifest `reference` names (a tag is resolved, as `crane digest`
    /// does): a HEAD request's `Docker-Content-Digest`, or, when the registry sends none, the
    /// hash of the manifest read with a GET capped at `limit`. For a digest reference the
    /// registry's header must equal it.
    pub async fn digest(
        &self,
        reference: &Reference,
        auth: &RegistryAuth,
        accept: &[&str],
        limit: u64,
    ) -> Result<String, BoundedError> {
        let url = self.manifest_url(reference);
        let response = self
            .authorized(reference, auth, Method::HEAD, &url, &accept.join(", "))
            .await?;
        // Only a 200's header counts. Registries that do not serve HEAD (405, 501) or answer
        // it oddly still serve the GET below, which reports any real error itself; a 401 that
        // could not be met is final.
        if response.status() == StatusCode::UNAUTHORIZED {
            return Err(unauthorized(&url));
        }
        let header = (response.status() == StatusCode::OK)
            .then(|| {
                response
                    .headers()
                    .get("docker-content-digest")
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_string)
            })
            .flatten();
        drop(response);
        match (header, reference.digest()) {
            (Some(found), Some(expected)) if found != expected => {
                Err(DigestError::VerificationError {
                    expected: expected.to_string(),
                    actual: cut(&found),
                }
                .into())
            }
            (Some(found), _) => Ok(found),
            (None, _) => Ok(self.manifest(reference, auth, accept, limit).await?.1),
        }
    }

    /// The manifest URL exactly as oci-client builds it (including its `?ns=` for mirrors).
    fn manifest_url(&self, reference: &Reference) -> String {
        let registry = reference.resolve_registry();
        format!(
            "{scheme}://{registry}/v2/{repository}/manifests/{target}{ns}",
            scheme = self.scheme_for(registry),
            repository = reference.repository(),
            target = match reference.digest() {
                Some(digest) => digest,
                None => reference.tag().unwrap_or("latest"),
            },
            ns = namespace_query(reference),
        )
    }

    fn is_insecure(&self, registry: &str) -> bool {
        self.insecure.iter().any(|entry| entry == registry)
    }

    fn scheme_for(&self, registry: &str) -> &'static str {
        if self.is_insecure(registry) {
            "http"
        } else {
            "https"
        }
    }

    /// Sends the request, meeting one authentication challenge if the registry asks for one.
    ///
    /// The answer is returned unread (whatever its status) so the caller reads it with its own
    /// cap; only a 401 that cannot be met becomes an error here.
    ///
    /// Credentials are not sent before the registry asks for them, with one exception learnt
    /// from real registries: many hide private repositories from anonymous callers behind a
    /// 404 or 403 instead of a 401 (and a cached token may have lapsed between two reads of
    /// one verification). When we hold Basic credentials and such an answer comes back to an
    /// anonymous try, the registry's `/v2/` is asked for its challenge and the request is
    /// sent again with what it asks for — a "not found" is believed only once the
    /// credentials were offered.
    async fn authorized(
        &self,
        reference: &Reference,
        auth: &RegistryAuth,
        method: Method,
        url: &str,
        accept: &str,
    ) -> Result<Response, BoundedError> {
        let registry = reference.resolve_registry();
        let repository = reference.repository();
        let key = TokenKey::new(registry, repository, auth);
        let cached = self.cached_token(&key);
        let first = match (auth, &cached) {
            (RegistryAuth::Bearer(token), _) => Credential::Bearer(token),
            (_, Some(token)) => Credential::Bearer(token),
            (RegistryAuth::Basic(user, password), None) if self.wants_basic(registry) => {
                Credential::Basic(user, password)
            }
            _ => Credential::Nothing,
        };
        let response = self.send(method.clone(), url, accept, &first).await?;
        if matches!(auth, RegistryAuth::Bearer(_)) {
            // A caller-given bearer token is used as is, like oci-client does; its 401 becomes
            // UnauthorizedError in the status check.
            return Ok(response);
        }
        let status = response.status();
        let challenge = if status == StatusCode::UNAUTHORIZED {
            if cached.is_some() {
                self.forget_token(&key);
            }
            // A challenge is only met when the registry itself made it: after a redirect to
            // another host (storage, a mirror) it would send our credentials, or ask a token
            // service with them, on that host's word.
            let own = same_origin(response.url(), url);
            let challenge = own.then(|| challenge_of(&response)).flatten();
            // The 401's body is never read: nothing in it is needed.
            drop(response);
            challenge
        } else if matches!(status, StatusCode::NOT_FOUND | StatusCode::FORBIDDEN)
            && matches!(first, Credential::Nothing)
            && matches!(auth, RegistryAuth::Basic(..))
        {
            match self.ask_challenge(registry).await {
                Some(challenge) => {
                    drop(response);
                    Some(challenge)
                }
                None => return Ok(response),
            }
        } else {
            return Ok(response);
        };
        match (challenge, auth, &first) {
            (Some(Challenge::Bearer { realm, service }), ..) => {
                let token = self
                    .fetch_token(registry, repository, auth, &realm, service.as_deref())
                    .await?;
                let response = self
                    .send(method, url, accept, &Credential::Bearer(&token.token))
                    .await?;
                // A token the registry itself just refused is not worth keeping.
                if response.status() != StatusCode::UNAUTHORIZED {
                    self.remember_token(key, token);
                }
                Ok(response)
            }
            (Some(Challenge::Basic), RegistryAuth::Basic(user, password), first)
                if !matches!(first, Credential::Basic(..)) =>
            {
                self.remember_basic(registry);
                self.send(method, url, accept, &Credential::Basic(user, password))
                    .await
            }
            _ => Err(unauthorized(url)),
        }
    }

    /// The challenge of the registry's API root (`GET /v2/` with no credentials, as Docker's
    /// and containerd's clients ask it), when it answers 401 with one we can meet; `None` for
    /// any other answer or a transport error (the caller then keeps the answer it has).
    async fn ask_challenge(&self, registry: &str) -> Option<Challenge> {
        let url = format!("{}://{registry}/v2/", self.scheme_for(registry));
        let response = self
            .send(Method::GET, &url, "", &Credential::Nothing)
            .await
            .ok()?;
        if response.status() != StatusCode::UNAUTHORIZED || !same_origin(response.url(), &url) {
            return None;
        }
        challenge_of(&response)
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        accept: &str,
        credential: &Credential<'_>,
    ) -> Result<Response, BoundedError> {
        let mut request = self.client.request(method, url);
        if !accept.is_empty() {
            request = request.header(ACCEPT, accept);
        }
        request = match credential {
            Credential::Nothing => request,
            Credential::Bearer(token) => request.bearer_auth(token),
            Credential::Basic(user, password) => request.basic_auth(user, Some(password)),
        };
        Ok(request.send().await?)
    }

    /// Distribution token auth: asks the realm for a pull token for `repository`, with Basic
    /// credentials when we have them. The answer is read with [`SMALL_BODY_LIMIT`].
    async fn fetch_token(
        &self,
        registry: &str,
        repository: &str,
        auth: &RegistryAuth,
        realm: &str,
        service: Option<&str>,
    ) -> Result<CachedToken, BoundedError> {
        let mut url = token_service_url(realm, self.is_insecure(registry))?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("scope", &format!("repository:{repository}:pull"));
            if let Some(service) = service {
                query.append_pair("service", service);
            }
        }
        let mut request = self.client.get(url);
        if let RegistryAuth::Basic(user, password) = auth {
            request = request.basic_auth(user, Some(password));
        }
        let response = request.send().await?;
        let status = response.status();
        if status != StatusCode::OK {
            let reason = read_prefix(response, SMALL_BODY_LIMIT).await;
            return Err(OciDistributionError::AuthenticationFailure(format!(
                "the registry's token service answered {status}: {}",
                cut(&String::from_utf8_lossy(&reason))
            ))
            .into());
        }
        // An oversized answer is the token service failing, not a registry object too large.
        let body = read_capped(response, SMALL_BODY_LIMIT, "token")
            .await
            .map_err(|error| match error {
                BoundedError::TooLarge { limit, .. } => {
                    OciDistributionError::AuthenticationFailure(format!(
                        "the registry's token service answered more than {limit} bytes"
                    ))
                    .into()
                }
                other => other,
            })?;
        parse_token_answer(&body, Instant::now())
    }

    fn cached_token(&self, key: &TokenKey) -> Option<String> {
        let tokens = lock(&self.tokens);
        tokens
            .get(key)
            .filter(|cached| cached.until > Instant::now())
            .map(|cached| cached.token.clone())
    }

    fn remember_token(&self, key: TokenKey, token: CachedToken) {
        let now = Instant::now();
        if token.until <= now || token.token.len() > MAX_CACHED_TOKEN_BYTES {
            return;
        }
        let mut tokens = lock(&self.tokens);
        tokens.remove(&key);
        tokens.retain(|_, cached| cached.until > now);
        while tokens
            .keys()
            .filter(|cached| cached.registry == key.registry)
            .count()
            >= MAX_TOKENS_PER_REGISTRY
        {
            evict_soonest(&mut tokens, |cached| cached.registry == key.registry);
        }
        while tokens.len() >= MAX_CACHED_TOKENS
            || token_bytes(&tokens) + token.token.len() > MAX_TOKEN_CACHE_BYTES
        {
            if !evict_soonest(&mut tokens, |_| true) {
                break;
            }
        }
        tokens.insert(key, token);
    }

    fn forget_token(&self, key: &TokenKey) {
        lock(&self.tokens).remove(key);
    }

    fn wants_basic(&self, registry: &str) -> bool {
        lock(&self.basic_registries).contains(registry)
    }

    fn remember_basic(&self, registry: &str) {
        let mut registries = lock(&self.basic_registries);
        if registries.len() >= MAX_BASIC_REGISTRIES {
            registries.clear();
        }
        registries.insert(registry.to_string());
    }
}

/// Removes the cached token closest to expiry among the keys `which` picks; false when none.
fn evict_soonest(
    tokens: &mut HashMap<TokenKey, CachedToken>,
    which: impl Fn(&TokenKey) -> bool,
) -> bool {
    let soonest = tokens
        .iter()
        .filter(|(key, _)| which(key))
        .min_by_key(|(_, cached)| cached.until)
        .map(|(key, _)| key.clone());
    soonest.is_some_and(|key| tokens.remove(&key).is_some())
}

fn token_bytes(tokens: &HashMap<TokenKey, CachedToken>) -> usize {
    tokens.values().map(|cached| cached.token.len()).sum()
}

/// Whether `answered` (where a response came from, after redirects) has the scheme, host and
/// port of `asked`.
fn same_origin(answered: &Url, asked: &str) -> bool {
    Url::parse(asked).is_ok_and(|asked| asked.origin() == answered.origin())
}

/// oci-client's `?ns=` query of a mirrored reference, or nothing.
fn namespace_query(reference: &Reference) -> String {
    reference
        .namespace()
        .map(|ns| format!("?ns={ns}"))
        .unwrap_or_default()
}

/// A poisoned lock only means another task panicked mid-update of a cache; the cache is still
/// usable (at worst a token is fetched again), so the poison is ignored rather than spread.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unauthorized(url: &str) -> BoundedError {
    OciDistributionError::UnauthorizedError {
        url: url.to_string(),
    }
    .into()
}

/// The token service URL from a Bearer challenge's realm: it must be an absolute http(s) URL,
/// and plain http only when the registry itself is reached over http — otherwise a registry
/// reached over https could have the credentials sent in the clear.
fn token_service_url(realm: &str, registry_insecure: bool) -> Result<Url, OciDistributionError> {
    let refuse = |why: &str| {
        OciDistributionError::AuthenticationFailure(format!(
            "the registry's token service {} {why}",
            cut(realm)
        ))
    };
    let url = Url::parse(realm).map_err(|_| refuse("is not an absolute URL"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if registry_insecure => Ok(url),
        "http" => Err(refuse("is not https")),
        _ => Err(refuse("is not an http or https URL")),
    }
}

/// The first challenge we can meet among the 401's WWW-Authenticate headers: Bearer (with a
/// realm) before Basic. Parsing stops at the first syntax error of a header, keeping what was
/// parsed before it.
fn challenge_of(response: &Response) -> Option<Challenge> {
    let mut basic = false;
    for value in response.headers().get_all(WWW_AUTHENTICATE) {
        let Ok(value) = value.to_str() else { continue };
        match parse_challenge(value) {
            Some(bearer @ Challenge::Bearer { .. }) => return Some(bearer),
            Some(Challenge::Basic) => basic = true,
            None => {}
        }
    }
    basic.then_some(Challenge::Basic)
}

fn parse_challenge(header: &str) -> Option<Challenge> {
    let mut basic = false;
    for challenge in http_auth::parser::ChallengeParser::new(header) {
        let Ok(challenge) = challenge else { break };
        if challenge.scheme.eq_ignore_ascii_case("bearer") {
            let param = |name: &str| {
                challenge
                    .params
                    .iter()
                    .find(|(key, _)| key.eq_ignore_ascii_case(name))
                    .map(|(_, value)| value.to_unescaped())
            };
            if let Some(realm) = param("realm") {
                return Some(Challenge::Bearer {
                    realm,
                    service: param("service"),
                });
            }
        } else if challenge.scheme.eq_ignore_ascii_case("basic") {
            basic = true;
        }
    }
    basic.then_some(Challenge::Basic)
}

/// Decodes a token service's answer. Decode errors name only the position and kind of the
/// fault, never the text (which holds the token).
fn parse_token_answer(body: &[u8], now: Instant) -> Result<CachedToken, BoundedError> {
    let answer: TokenAnswer = serde_json::from_slice(body).map_err(|e| {
        OciDistributionError::RegistryTokenDecodeError(format!(
            "{:?} error at line {} column {}",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    let token = [answer.token, answer.access_token]
        .into_iter()
        .flatten()
        .find(|token| !token.is_empty())
        .ok_or_else(|| {
            OciDistributionError::RegistryTokenDecodeError(
                "the answer has neither a token nor an access_token".into(),
            )
        })?;
    let seconds = answer
        .expires_in
        .as_ref()
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(DEFAULT_TOKEN_SECONDS);
    let lifetime = Duration::from_secs(seconds)
        .min(MAX_TOKEN_LIFETIME)
        .saturating_sub(TOKEN_MARGIN);
    Ok(CachedToken {
        token,
        until: now + lifetime,
    })
}

/// oci-client's `validate_registry_response`, reading an error body only up to
/// [`SMALL_BODY_LIMIT`]: 200 passes; 401 → `UnauthorizedError`; other 2xx →
/// `SpecViolationError`; 4xx → `RegistryError` when the body is an OCI error envelope, else
/// `ServerError`; anything else → `ServerError`.
async fn check_status(response: Response, url: &str) -> Result<Response, BoundedError> {
    let status = response.status();
    if status == StatusCode::OK {
        return Ok(response);
    }
    if status == StatusCode::UNAUTHORIZED {
        return Err(unauthorized(url));
    }
    if status.is_success() {
        return Err(OciDistributionError::SpecViolationError(format!(
            "Expected HTTP Status {}, got {status} instead",
            StatusCode::OK
        ))
        .into());
    }
    let body = read_prefix(response, SMALL_BODY_LIMIT).await;
    if status.is_client_error()
        && let Ok(envelope) = serde_json::from_slice::<OciEnvelope>(&body)
    {
        return Err(OciDistributionError::RegistryError {
            envelope: tame(envelope),
            url: url.to_string(),
        }
        .into());
    }
    Err(OciDistributionError::ServerError {
        code: status.as_u16(),
        url: url.to_string(),
        message: cut(&String::from_utf8_lossy(&body)),
    }
    .into())
}

/// Keeps an envelope's codes (what callers classify by) and cuts what a stranger wrote:
/// messages and unknown codes to [`MESSAGE_CHARS`], at most [`MAX_ENVELOPE_ERRORS`] errors,
/// and no free-form `detail`.
fn tame(mut envelope: OciEnvelope) -> OciEnvelope {
    envelope.errors.truncate(MAX_ENVELOPE_ERRORS);
    for error in &mut envelope.errors {
        error.message = cut(&error.message);
        error.detail = serde_json::Value::Null;
        if let OciErrorCode::Other(code) = &mut error.code {
            *code = cut(code);
        }
    }
    envelope
}

/// Reads a whole body of at most `limit` bytes: a larger declared Content-Length is refused
/// unread, and the read stops as soon as the count passes `limit`. Dropping the response then
/// closes the connection, so the registry cannot push more.
async fn read_capped(
    mut response: Response,
    limit: u64,
    what: &'static str,
) -> Result<Vec<u8>, BoundedError> {
    let too_large = BoundedError::TooLarge { what, limit };
    if response
        .content_length()
        .is_some_and(|length| length > limit)
    {
        return Err(too_large);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let total = u64::try_from(body.len().saturating_add(chunk.len())).unwrap_or(u64::MAX);
        if total > limit {
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The first `limit` bytes of a body whose content only serves as an error message. A
/// transport error ends the read quietly: the status already says what went wrong.
async fn read_prefix(mut response: Response, limit: u64) -> Vec<u8> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    body
}

/// Checks `body` against `expected` (`algorithm:hex`) as oci-client does, for sha256, sha384
/// and sha512; returns the verified digest.
fn verify_digest(body: &[u8], expected: &str) -> Result<String, OciDistributionError> {
    let (algorithm, hex_digest) = expected
        .split_once(':')
        .ok_or(DigestError::MissingAlgorithm)?;
    let actual = match algorithm {
        "sha256" => hex::encode(sha2::Sha256::digest(body)),
        "sha384" => hex::encode(sha2::Sha384::digest(body)),
        "sha512" => hex::encode(sha2::Sha512::digest(body)),
        other => return Err(DigestError::UnsupportedAlgorithm(cut(other)).into()),
    };
    if actual != hex_digest {
        return Err(DigestError::VerificationError {
            expected: expected.to_string(),
            actual: format!("{algorithm}:{actual}"),
        }
        .into());
    }
    Ok(expected.to_string())
}

/// Registry-supplied text made fit for an error: at most [`MESSAGE_CHARS`] characters (the
/// last one an ellipsis when cut), control characters (newlines, terminal escapes) blanked.
fn cut(text: &str) -> String {
    let clean = |c: char| if c.is_control() { ' ' } else { c };
    if text.chars().nth(MESSAGE_CHARS).is_none() {
        return text.chars().map(clean).collect();
    }
    let mut out: String = text.chars().take(MESSAGE_CHARS - 1).map(clean).collect();
    out.push('…');
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    //! Every test talks to a real HTTP/1.1 server on 127.0.0.1 that the test starts, so that
    //! reqwest's and hyper's own body handling is what is exercised.

    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    /// The server itself stops an endless body here, so a reader that reads everything ends
    /// (and fails the test) instead of hanging.
    const ENDLESS_CAP: u64 = 64 * MIB;
    /// How much an endless body may have been sent past the reader's cap: hyper's read buffer
    /// plus the loopback socket buffers (the server's send buffer is kept small).
    const SLACK: u64 = MIB;
    const USER: &str = "robot";
    const PASSWORD: &str = "hunter2-password";
    /// `robot:hunter2-password`, base64.
    const BASIC: &str = "Basic cm9ib3Q6aHVudGVyMi1wYXNzd29yZA==";
    const TOKEN: &str = "tok-123-very-secret";

    #[derive(Clone, Debug)]
    struct Seen {
        method: String,
        path: String,
        query: Vec<(String, String)>,
        authorization: Option<String>,
        accept: Option<String>,
    }

    impl Seen {
        fn query(&self, name: &str) -> Option<&str> {
            self.query
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        }
    }

    enum Body {
        Fixed(Vec<u8>),
        /// Chunked transfer encoding, no Content-Length, never ends (until ENDLESS_CAP).
        EndlessChunked,
        /// No Content-Length, no chunking: the body ends when the connection closes.
        EndlessUntilClose,
        /// Declares this Content-Length and then sends nothing, holding the connection.
        Declared(u64),
    }

    struct Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: Body,
    }

    impl Answer {
        fn new(status: u16, body: &[u8]) -> Self {
            Answer {
                status,
                headers: Vec::new(),
                body: Body::Fixed(body.to_vec()),
            }
        }
        fn with_body(status: u16, body: Body) -> Self {
            Answer {
                status,
                headers: Vec::new(),
                body,
            }
        }
        fn header(mut self, name: &str, value: &str) -> Self {
            self.headers.push((name.to_string(), value.to_string()));
            self
        }
    }

    /// A JSON manifest of at most 64 KiB, `tail` on `server` (most tests read one so).
    async fn json_manifest(
        reader: &BoundedReader,
        server: &Server,
        tail: &str,
        auth: &RegistryAuth,
    ) -> Result<(Vec<u8>, String), BoundedError> {
        reader
            .manifest(
                &server.reference(tail),
                auth,
                &["application/json"],
                64 * KIB,
            )
            .await
    }

    struct Server {
        addr: String,
        seen: Arc<std::sync::Mutex<Vec<Seen>>>,
        /// Bytes of endless bodies the server managed to write.
        sent: Arc<AtomicU64>,
        /// Endless bodies whose writing has ended (reader gone or ENDLESS_CAP reached).
        endless_done: Arc<AtomicUsize>,
    }

    impl Server {
        fn seen(&self, path: &str) -> Vec<Seen> {
            self.seen
                .lock()
                .expect("seen")
                .iter()
                .filter(|seen| seen.path == path)
                .cloned()
                .collect()
        }

        /// Waits until `count` endless bodies stopped being written, then says how many bytes
        /// went out in all.
        async fn endless_sent(&self, count: usize) -> u64 {
            tokio::time::timeout(Duration::from_secs(20), async {
                while self.endless_done.load(Ordering::SeqCst) < count {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .expect("the endless body never stopped being written");
            self.sent.load(Ordering::SeqCst)
        }

        fn reader(&self) -> BoundedReader {
            BoundedReader::new(vec![self.addr.clone()]).expect("reader")
        }

        fn reference(&self, tail: &str) -> Reference {
            format!("{}/{tail}", self.addr).parse().expect("reference")
        }
    }

    /// Starts a server; `make` gets the server's `host:port` and returns the request handler.
    async fn serve<F>(make: impl FnOnce(String) -> F) -> Server
    where
        F: Fn(&Seen) -> Answer + Send + Sync + 'static,
    {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        // Accepted sockets inherit this: a small send buffer keeps what the kernel absorbs
        // after the reader stops small, so the byte count reflects what the reader took.
        socket.set_send_buffer_size(16 * 1024).expect("send buffer");
        socket
            .bind("127.0.0.1:0".parse().expect("address"))
            .expect("bind");
        let listener = socket.listen(64).expect("listen");
        let addr = listener.local_addr().expect("local address").to_string();
        let handler = Arc::new(make(addr.clone()));
        let server = Server {
            addr,
            seen: Arc::default(),
            sent: Arc::default(),
            endless_done: Arc::default(),
        };
        let (seen, sent, done) = (
            server.seen.clone(),
            server.sent.clone(),
            server.endless_done.clone(),
        );
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (handler, seen, sent, done) =
                    (handler.clone(), seen.clone(), sent.clone(), done.clone());
                tokio::spawn(async move {
                    answer(conn, &*handler, &seen, &sent, &done).await;
                });
            }
        });
        server
    }

    async fn answer(
        mut conn: tokio::net::TcpStream,
        handler: &(dyn Fn(&Seen) -> Answer + Send + Sync),
        seen: &std::sync::Mutex<Vec<Seen>>,
        sent: &AtomicU64,
        done: &AtomicUsize,
    ) {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or_default().split_whitespace();
        let method = request_line.next().unwrap_or_default().to_string();
        let target = request_line.next().unwrap_or_default();
        let url = Url::parse(&format!("http://server{target}")).expect("target");
        let header = |name: &str| {
            head.split("\r\n").skip(1).find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_string())
            })
        };
        let request = Seen {
            method,
            path: url.path().to_string(),
            query: url
                .query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
            authorization: header("authorization"),
            accept: header("accept"),
        };
        seen.lock().expect("seen").push(request.clone());
        let reply = handler(&request);
        let mut out = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", reply.status);
        for (name, value) in &reply.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        match &reply.body {
            Body::Fixed(body) => out.push_str(&format!("Content-Length: {}\r\n", body.len())),
            Body::EndlessChunked => out.push_str("Transfer-Encoding: chunked\r\n"),
            Body::EndlessUntilClose => {}
            Body::Declared(length) => out.push_str(&format!("Content-Length: {length}\r\n")),
        }
        out.push_str("\r\n");
        if conn.write_all(out.as_bytes()).await.is_err() {
            return;
        }
        match reply.body {
            Body::Fixed(body) => {
                let _ = conn.write_all(&body).await;
                let _ = conn.shutdown().await;
            }
            Body::Declared(_) => tokio::time::sleep(Duration::from_secs(60)).await,
            Body::EndlessChunked | Body::EndlessUntilClose => {
                let chunked = matches!(reply.body, Body::EndlessChunked);
                let data = vec![b'x'; 16 * 1024];
                let mut framed = format!("{:x}\r\n", data.len()).into_bytes();
                framed.extend_from_slice(&data);
                framed.extend_from_slice(b"\r\n");
                let mut total = 0;
                while total < ENDLESS_CAP {
                    let piece = if chunked { &framed } else { &data };
                    if conn.write_all(piece).await.is_err() {
                        break;
                    }
                    total += data.len() as u64;
                    sent.fetch_add(data.len() as u64, Ordering::SeqCst);
                }
                if chunked && total >= ENDLESS_CAP {
                    let _ = conn.write_all(b"0\r\n\r\n").await;
                }
                let _ = conn.shutdown().await;
                done.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    fn sha256(body: &[u8]) -> String {
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(body)))
    }

    fn basic() -> RegistryAuth {
        RegistryAuth::Basic(USER.into(), PASSWORD.into())
    }

    fn oci(error: BoundedError) -> OciDistributionError {
        match error {
            BoundedError::Registry(error) => error,
            other => panic!("expected a registry error, got {other:?}"),
        }
    }

    const MANIFEST: &[u8] =
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;

    #[tokio::test]
    async fn manifest_by_digest_is_checked_against_its_body() {
        let digest = sha256(MANIFEST);
        let other = sha256(b"something else");
        let (good, bad) = (
            format!("/v2/team/app/manifests/{digest}"),
            format!("/v2/team/app/manifests/{other}"),
        );
        let server = serve(move |_| {
            move |seen: &Seen| {
                if seen.path == good || seen.path == bad || seen.path.ends_with("/v1") {
                    Answer::new(200, MANIFEST)
                } else {
                    Answer::new(404, b"")
                }
            }
        })
        .await;
        let reader = server.reader();
        let accept = ["application/a", "application/b"];

        let (body, got) = reader
            .manifest(
                &server.reference(&format!("team/app@{digest}")),
                &RegistryAuth::Anonymous,
                &accept,
                64 * KIB,
            )
            .await
            .expect("manifest");
        assert_eq!(body, MANIFEST);
        assert_eq!(got, digest);
        let seen = server.seen(&format!("/v2/team/app/manifests/{digest}"));
        assert_eq!(
            seen[0].accept.as_deref(),
            Some("application/a, application/b")
        );
        assert_eq!(seen[0].authorization, None);

        // By tag: the digest is the body's own.
        let (_, got) = reader
            .manifest(
                &server.reference("team/app:v1"),
                &RegistryAuth::Anonymous,
                &accept,
                64 * KIB,
            )
            .await
            .expect("manifest by tag");
        assert_eq!(got, digest);

        let error = reader
            .manifest(
                &server.reference(&format!("team/app@{other}")),
                &RegistryAuth::Anonymous,
                &accept,
                64 * KIB,
            )
            .await
            .expect_err("a body not matching its digest");
        assert!(
            matches!(
                oci(error),
                OciDistributionError::DigestError(DigestError::VerificationError { .. })
            ),
            "wrong error"
        );
    }

    async fn endless_manifest_is_cut(body: fn() -> Body) {
        let server = serve(move |_| move |_: &Seen| Answer::with_body(200, body())).await;
        let limit = 64 * KIB;
        let error = tokio::time::timeout(
            Duration::from_secs(20),
            server.reader().manifest(
                &server.reference("team/app:v1"),
                &RegistryAuth::Anonymous,
                &["application/json"],
                limit,
            ),
        )
        .await
        .expect("the read stops by itself")
        .expect_err("an endless manifest");
        assert!(
            matches!(error, BoundedError::TooLarge { what: "manifest", limit: l } if l == limit),
            "{error:?}"
        );
        let sent = server.endless_sent(1).await;
        assert!(
            sent < limit + SLACK,
            "the reader took {sent} bytes of an endless body"
        );
    }

    #[tokio::test]
    async fn endless_chunked_manifest_is_cut_at_the_limit() {
        endless_manifest_is_cut(|| Body::EndlessChunked).await;
    }

    #[tokio::test]
    async fn endless_close_delimited_manifest_is_cut_at_the_limit() {
        endless_manifest_is_cut(|| Body::EndlessUntilClose).await;
    }

    #[tokio::test]
    async fn declared_length_above_the_limit_is_refused_unread() {
        // The server declares 10 MiB and sends none of it: a reader that tried to read the
        // body would hang until the timeout.
        let server = serve(|_| |_: &Seen| Answer::with_body(200, Body::Declared(10 * MIB))).await;
        let error = tokio::time::timeout(
            Duration::from_secs(5),
            json_manifest(
                &server.reader(),
                &server,
                "team/app:v1",
                &RegistryAuth::Anonymous,
            ),
        )
        .await
        .expect("refused without reading the body")
        .expect_err("too large");
        assert!(
            matches!(
                error,
                BoundedError::TooLarge {
                    what: "manifest",
                    ..
                }
            ),
            "{error:?}"
        );
    }

    /// A registry with token auth: manifests need `Bearer TOKEN`, `/token` hands it out for
    /// the Basic credentials and a pull scope on `team/app`. `team/denied` refuses even the
    /// token.
    async fn token_registry() -> Server {
        serve(|addr| {
            let challenge = format!(r#"Bearer realm="http://{addr}/token",service="reg""#);
            move |seen: &Seen| match seen.path.as_str() {
                "/token" => {
                    let scope_ok = matches!(
                        seen.query("scope"),
                        Some("repository:team/app:pull" | "repository:team/denied:pull")
                    );
                    if seen.authorization.as_deref() == Some(BASIC)
                        && scope_ok
                        && seen.query("service") == Some("reg")
                    {
                        Answer::new(
                            200,
                            format!(r#"{{"token":"{TOKEN}","expires_in":300}}"#).as_bytes(),
                        )
                    } else {
                        Answer::new(401, b"bad credentials")
                    }
                }
                path if path.starts_with("/v2/team/app/")
                    && seen.authorization.as_deref() == Some(&format!("Bearer {TOKEN}")) =>
                {
                    Answer::new(200, MANIFEST)
                }
                _ => Answer::new(
                    401,
                    br#"{"errors":[{"code":"UNAUTHORIZED","message":"no"}]}"#,
                )
                .header("WWW-Authenticate", &challenge),
            }
        })
        .await
    }

    fn assert_no_secret(error: &BoundedError) {
        for text in [format!("{error}"), format!("{error:?}")] {
            assert!(!text.contains(TOKEN), "the token leaked: {text}");
            assert!(!text.contains(PASSWORD), "the password leaked: {text}");
            assert!(
                !text.contains(&BASIC[6..]),
                "the credentials leaked: {text}"
            );
        }
    }

    #[tokio::test]
    async fn bearer_flow_fetches_a_token_once_and_caches_it() {
        let server = token_registry().await;
        let reader = server.reader();
        let digest = sha256(MANIFEST);
        let (body, _) = json_manifest(&reader, &server, &format!("team/app@{digest}"), &basic())
            .await
            .expect("manifest through the token flow");
        assert_eq!(body, MANIFEST);
        // Another manifest of the same repository: the cached token goes up front.
        json_manifest(&reader, &server, "team/app:v1", &basic())
            .await
            .expect("second manifest");
        assert_eq!(server.seen("/token").len(), 1, "the token was not cached");
        assert_eq!(
            server.seen("/v2/team/app/manifests/v1")[0]
                .authorization
                .as_deref(),
            Some(format!("Bearer {TOKEN}").as_str())
        );
        assert!(!format!("{reader:?}").contains(TOKEN));

        // The token belongs to these credentials: an anonymous read must not use it.
        let error = json_manifest(&reader, &server, "team/app:v1", &RegistryAuth::Anonymous)
            .await
            .expect_err("anonymous");
        assert_eq!(server.seen("/token").len(), 2);
        assert_eq!(server.seen("/token")[1].authorization, None);
        assert!(
            matches!(oci(error), OciDistributionError::AuthenticationFailure(ref why) if why.contains("401")),
        );

        // A registry refusing even the token: UnauthorizedError, with no secret in it.
        let error = json_manifest(&reader, &server, "team/denied:v1", &basic())
            .await
            .expect_err("denied");
        assert_no_secret(&error);
        assert!(
            matches!(oci(error), OciDistributionError::UnauthorizedError { .. }),
            "wrong error"
        );

        // Wrong password: AuthenticationFailure, with no secret in it.
        let wrong = RegistryAuth::Basic(USER.into(), format!("{PASSWORD}-wrong"));
        let error = server
            .reader()
            .manifest(
                &server.reference("team/app:v1"),
                &wrong,
                &["application/json"],
                64 * KIB,
            )
            .await
            .expect_err("wrong password");
        assert_no_secret(&error);
        assert!(matches!(
            oci(error),
            OciDistributionError::AuthenticationFailure(_)
        ));
    }

    #[tokio::test]
    async fn caller_bearer_token_is_sent_directly() {
        let server = token_registry().await;
        server
            .reader()
            .manifest(
                &server.reference("team/app:v1"),
                &RegistryAuth::Bearer(TOKEN.into()),
                &["application/json"],
                64 * KIB,
            )
            .await
            .expect("manifest");
        assert!(server.seen("/token").is_empty());
        assert_eq!(server.seen("/v2/team/app/manifests/v1").len(), 1);
    }

    #[tokio::test]
    async fn basic_challenge_is_met_with_basic_credentials() {
        let server = serve(|_| {
            |seen: &Seen| {
                if seen.authorization.as_deref() == Some(BASIC) {
                    Answer::new(200, MANIFEST)
                } else {
                    Answer::new(401, b"").header("WWW-Authenticate", r#"Basic realm="reg""#)
                }
            }
        })
        .await;
        let reader = server.reader();
        for _ in 0..2 {
            json_manifest(&reader, &server, "team/app:v1", &basic())
                .await
                .expect("manifest with Basic");
        }
        // One anonymous try, then Basic; the second read sent Basic up front.
        assert_eq!(server.seen("/v2/team/app/manifests/v1").len(), 3);
        let error = json_manifest(&reader, &server, "team/app:v1", &RegistryAuth::Anonymous)
            .await
            .expect_err("anonymous");
        assert!(matches!(
            oci(error),
            OciDistributionError::UnauthorizedError { .. }
        ));
    }

    #[tokio::test]
    async fn endless_token_answer_is_cut() {
        let server = serve(|addr| {
            let challenge = format!(r#"Bearer realm="http://{addr}/token",service="reg""#);
            move |seen: &Seen| {
                if seen.path == "/token" {
                    Answer::with_body(200, Body::EndlessChunked)
                } else {
                    Answer::new(401, b"").header("WWW-Authenticate", &challenge)
                }
            }
        })
        .await;
        let error = tokio::time::timeout(
            Duration::from_secs(20),
            json_manifest(&server.reader(), &server, "team/app:v1", &basic()),
        )
        .await
        .expect("the read stops by itself")
        .expect_err("an endless token");
        // A token service failing, not an object too large: callers report it as the
        // credentials' problem.
        match oci(error) {
            OciDistributionError::AuthenticationFailure(why) => assert!(
                why.contains(&format!("more than {SMALL_BODY_LIMIT} bytes")),
                "{why}"
            ),
            other => panic!("expected AuthenticationFailure, got {other:?}"),
        }
        let sent = server.endless_sent(1).await;
        assert!(sent < SMALL_BODY_LIMIT + SLACK, "took {sent} bytes");
    }

    #[tokio::test]
    async fn error_statuses_map_as_oci_client_does() {
        let long = "y".repeat(10_000);
        let envelope = format!(
            r#"{{"errors":[{{"code":"MANIFEST_UNKNOWN","message":"{long}","detail":{{"x":"{long}"}}}}]}}"#
        );
        let server = serve(move |_| {
            move |seen: &Seen| match seen.path.as_str() {
                "/v2/team/app/manifests/missing" => Answer::new(404, envelope.as_bytes()),
                "/v2/team/app/manifests/plain" => Answer::new(404, b"not here\n\x1b[31m"),
                "/v2/team/app/manifests/created" => Answer::new(201, b""),
                _ => Answer::with_body(500, Body::EndlessUntilClose),
            }
        })
        .await;
        let reader = server.reader();
        let read = |tag: &'static str| {
            let reference = server.reference(&format!("team/app:{tag}"));
            let reader = &reader;
            async move {
                reader
                    .manifest(
                        &reference,
                        &RegistryAuth::Anonymous,
                        &["application/json"],
                        64 * KIB,
                    )
                    .await
                    .expect_err("an error status")
            }
        };

        match oci(read("missing").await) {
            OciDistributionError::RegistryError { envelope, url } => {
                assert_eq!(envelope.errors[0].code, OciErrorCode::ManifestUnknown);
                assert!(envelope.errors[0].message.chars().count() <= MESSAGE_CHARS);
                assert!(url.ends_with("/v2/team/app/manifests/missing"));
            }
            other => panic!("expected RegistryError, got {other:?}"),
        }
        match oci(read("plain").await) {
            OciDistributionError::ServerError { code, message, .. } => {
                assert_eq!(code, 404);
                assert!(!message.contains('\x1b') && !message.contains('\n'));
            }
            other => panic!("expected ServerError, got {other:?}"),
        }
        assert!(matches!(
            oci(read("created").await),
            OciDistributionError::SpecViolationError(_)
        ));
        match oci(read("broken").await) {
            OciDistributionError::ServerError { code, message, .. } => {
                assert_eq!(code, 500);
                assert!(message.chars().count() <= MESSAGE_CHARS, "{message}");
            }
            other => panic!("expected ServerError, got {other:?}"),
        }
        let sent = server.endless_sent(1).await;
        assert!(sent < SMALL_BODY_LIMIT + SLACK, "took {sent} bytes");
    }

    #[tokio::test]
    async fn referrers_none_body_or_too_large() {
        let (absent, present, endless) =
            (sha256(b"absent"), sha256(b"present"), sha256(b"endless"));
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        let paths = [absent.clone(), present.clone()]
            .map(|digest| format!("/v2/team/app/referrers/{digest}"));
        let server = serve(move |_| {
            move |seen: &Seen| {
                if seen.path == paths[0] {
                    Answer::new(404, b"")
                } else if seen.path == paths[1] {
                    Answer::new(200, index)
                } else {
                    Answer::with_body(200, Body::EndlessChunked)
                }
            }
        })
        .await;
        let reader = server.reader();
        let subject = |digest: &str| server.reference(&format!("team/app@{digest}"));
        let anonymous = RegistryAuth::Anonymous;

        let none = reader
            .referrers(&subject(&absent), &anonymous, 64 * KIB)
            .await
            .expect("404");
        assert_eq!(none, None);
        let some = reader
            .referrers(&subject(&present), &anonymous, 64 * KIB)
            .await
            .expect("200");
        assert_eq!(some.as_deref(), Some(&index[..]));
        assert_eq!(
            server.seen(&format!("/v2/team/app/referrers/{present}"))[0]
                .accept
                .as_deref(),
            Some(REFERRERS_MEDIA_TYPE)
        );
        let error = reader
            .referrers(&subject(&endless), &anonymous, 64 * KIB)
            .await
            .expect_err("endless");
        assert!(
            matches!(
                error,
                BoundedError::TooLarge {
                    what: "referrers",
                    ..
                }
            ),
            "{error:?}"
        );
        let sent = server.endless_sent(1).await;
        assert!(sent < 64 * KIB + SLACK, "took {sent} bytes");

        let by_tag = reader
            .referrers(&server.reference("team/app:v1"), &anonymous, 64 * KIB)
            .await
            .expect_err("a tag has no referrers");
        assert!(matches!(oci(by_tag), OciDistributionError::GenericError(_)));
    }

    #[test]
    fn token_service_must_be_https_unless_the_registry_is_insecure() {
        assert!(token_service_url("https://auth.example/token", false).is_ok());
        assert!(token_service_url("http://127.0.0.1:5000/token", true).is_ok());
        for (realm, insecure) in [
            ("http://auth.example/token", false),
            ("/token", true),
            ("ftp://auth.example/token", true),
            ("file:///etc/passwd", true),
            ("", false),
        ] {
            match token_service_url(realm, insecure) {
                Err(OciDistributionError::AuthenticationFailure(why)) => {
                    assert!(why.contains("token service"), "{why}")
                }
                other => panic!("{realm} was not refused: {other:?}"),
            }
        }
        match token_service_url("http://auth.example/token", false) {
            Err(OciDistributionError::AuthenticationFailure(why)) => {
                assert!(why.ends_with("is not https"), "{why}")
            }
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn challenges_are_parsed_with_http_auth() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"bearer realm="https://a/t""#),
            Some(Challenge::Bearer {
                realm: "https://a/t".into(),
                service: None,
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="x", Bearer realm="https://a/t""#),
            Some(Challenge::Bearer {
                realm: "https://a/t".into(),
                service: None,
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="x""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Bearer"), None);
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge("\"garbage"), None);
    }

    #[test]
    fn token_answers_are_decoded_without_showing_them() {
        let now = Instant::now();
        let token = parse_token_answer(br#"{"access_token":"abc"}"#, now).expect("token");
        assert_eq!(token.token, "abc");
        assert_eq!(
            token.until,
            now + Duration::from_secs(DEFAULT_TOKEN_SECONDS) - TOKEN_MARGIN
        );
        let token =
            parse_token_answer(br#"{"token":"t","expires_in":999999999}"#, now).expect("token");
        assert_eq!(token.until, now + MAX_TOKEN_LIFETIME - TOKEN_MARGIN);
        let token = parse_token_answer(br#"{"token":"t","expires_in":"300"}"#, now).expect("t");
        assert_eq!(token.token, "t");
        for bad in [
            &br#"{"token":"secret-value""#[..],
            br#"{"expires_in":3}"#,
            b"[]",
        ] {
            match parse_token_answer(bad, now) {
                Err(BoundedError::Registry(OciDistributionError::RegistryTokenDecodeError(
                    why,
                ))) => assert!(!why.contains("secret-value"), "{why}"),
                Err(other) => panic!("wrong error {other:?}"),
                Ok(_) => panic!("accepted a bad answer"),
            }
        }
    }

    /// The operator drives these calls from spawned tasks: the futures must be `Send` and the
    /// reader shareable.
    #[test]
    fn futures_are_send_and_the_reader_is_sync() {
        fn send<T: Send>(_: &T) {}
        fn sync<T: Send + Sync>() {}
        sync::<BoundedReader>();
        let reader = BoundedReader::new(Vec::new()).expect("reader");
        let reference: Reference = "registry.example/a/b:v1".parse().expect("reference");
        let auth = RegistryAuth::Anonymous;
        send(&reader.manifest(&reference, &auth, &[], 1));
        send(&reader.referrers(&reference, &auth, 1));
        send(&reader.blob(&reference, "sha256:00", &auth, ("blob", 1)));
        send(&reader.digest(&reference, &auth, &[], 1));
    }

    #[test]
    fn cut_keeps_at_most_200_printable_characters() {
        assert_eq!(cut("short\nline"), "short line");
        let long = "é".repeat(1000);
        let cut_long = cut(&long);
        assert_eq!(cut_long.chars().count(), MESSAGE_CHARS);
        assert!(cut_long.ends_with('…'));
        assert_eq!(cut(&"a".repeat(200)), "a".repeat(200));
    }

    #[tokio::test]
    async fn blob_through_the_token_flow_is_checked_and_capped() {
        let server = token_registry().await;
        let reader = server.reader();
        let at = server.reference("team/app:v1");
        let digest = sha256(MANIFEST);
        let body = reader
            .blob(&at, &digest, &basic(), ("bundle", 64 * KIB))
            .await
            .expect("blob through the token flow");
        assert_eq!(body, MANIFEST);
        let seen = server.seen(&format!("/v2/team/app/blobs/{digest}"));
        assert_eq!(seen.last().map(|s| s.method.as_str()), Some("GET"));

        // Content that does not hash to the digest asked for is refused.
        let other = sha256(b"something else");
        let error = reader
            .blob(&at, &other, &basic(), ("bundle", 64 * KIB))
            .await
            .expect_err("wrong content");
        assert!(
            matches!(oci(error), OciDistributionError::DigestError(_)),
            "wrong error"
        );

        // Larger than the caller's cap: named as the caller named it.
        let error = reader
            .blob(&at, &digest, &basic(), ("signature", 8))
            .await
            .expect_err("too large");
        assert!(
            matches!(
                error,
                BoundedError::TooLarge {
                    what: "signature",
                    limit: 8
                }
            ),
            "{error:?}"
        );

        // A digest that is not `algorithm:hex` never reaches the request path.
        let before = server.seen.lock().expect("seen").len();
        for bad in ["sha256:../../x", "md5:abcd", "nodigest", "sha256:"] {
            reader
                .blob(&at, bad, &basic(), ("bundle", 64 * KIB))
                .await
                .expect_err(bad);
        }
        assert_eq!(server.seen.lock().expect("seen").len(), before);
    }

    #[tokio::test]
    async fn endless_blob_is_cut_at_the_limit() {
        let server = serve(|_| |_: &Seen| Answer::with_body(200, Body::EndlessChunked)).await;
        let digest = sha256(b"x");
        let error = server
            .reader()
            .blob(
                &server.reference("team/app:v1"),
                &digest,
                &RegistryAuth::Anonymous,
                ("bundle", MIB),
            )
            .await
            .expect_err("endless");
        assert!(
            matches!(error, BoundedError::TooLarge { what: "bundle", .. }),
            "{error:?}"
        );
        let sent = server.endless_sent(1).await;
        assert!(
            sent <= MIB + SLACK,
            "{sent} bytes were sent for a 1 MiB cap"
        );
    }

    #[tokio::test]
    async fn digest_from_head_or_from_the_capped_body() {
        let named = sha256(b"the index");
        let header_digest = named.clone();
        let server = serve(move |_| {
            move |seen: &Seen| match (seen.method.as_str(), seen.path.as_str()) {
                ("HEAD", "/v2/team/app/manifests/v1") => {
                    Answer::new(200, b"").header("Docker-Content-Digest", &header_digest)
                }
                // No header: the digest must come from the body.
                ("HEAD", "/v2/team/plain/manifests/v1") => Answer::new(200, b""),
                ("GET", "/v2/team/plain/manifests/v1") => Answer::new(200, MANIFEST),
                ("GET", "/v2/team/huge/manifests/v1") => {
                    Answer::with_body(200, Body::EndlessChunked)
                }
                ("HEAD", "/v2/team/huge/manifests/v1") => Answer::new(200, b""),
                // A registry that does not serve HEAD: the GET still gives the digest.
                ("HEAD", "/v2/team/nohead/manifests/v1") => Answer::new(405, b""),
                ("GET", "/v2/team/nohead/manifests/v1") => Answer::new(200, MANIFEST),
                _ => Answer::new(404, b""),
            }
        })
        .await;
        let reader = server.reader();
        let accept = ["application/vnd.oci.image.index.v1+json"];
        let anonymous = RegistryAuth::Anonymous;
        let digest_of = |tail: &'static str| {
            let (reader, reference) = (&reader, server.reference(tail));
            let (anonymous, accept) = (&anonymous, &accept);
            async move { reader.digest(&reference, anonymous, accept, 64 * KIB).await }
        };
        let found = digest_of("team/app:v1").await.expect("digest from HEAD");
        assert_eq!(found, named);
        assert_eq!(
            server.seen("/v2/team/app/manifests/v1")[0]
                .accept
                .as_deref(),
            Some(accept[0])
        );
        let found = digest_of("team/plain:v1")
            .await
            .expect("digest from the body");
        assert_eq!(found, sha256(MANIFEST));
        let methods: Vec<_> = server
            .seen("/v2/team/plain/manifests/v1")
            .into_iter()
            .map(|s| s.method)
            .collect();
        assert_eq!(methods, ["HEAD", "GET"]);
        let found = digest_of("team/nohead:v1")
            .await
            .expect("digest when HEAD is refused");
        assert_eq!(found, sha256(MANIFEST));
        let error = digest_of("team/huge:v1").await.expect_err("endless");
        assert!(matches!(
            error,
            BoundedError::TooLarge {
                what: "manifest",
                ..
            }
        ));
        let error = digest_of("team/gone:v1").await.expect_err("404");
        assert!(
            matches!(
                oci(error),
                OciDistributionError::ServerError { code: 404, .. }
            ),
            "wrong error"
        );
    }

    #[tokio::test]
    async fn digest_reference_must_match_the_registry_header() {
        let server = serve(|_| {
            |_: &Seen| Answer::new(200, b"").header("Docker-Content-Digest", &sha256(b"another"))
        })
        .await;
        let asked = sha256(b"pinned");
        let error = server
            .reader()
            .digest(
                &server.reference(&format!("team/app@{asked}")),
                &RegistryAuth::Anonymous,
                &["application/json"],
                64 * KIB,
            )
            .await
            .expect_err("a registry naming another digest");
        assert!(
            matches!(oci(error), OciDistributionError::DigestError(_)),
            "wrong error"
        );
    }

    /// A registry that answers anonymous callers 404 (or 403) for private repositories and
    /// shows its challenge only at `/v2/`, as many hosted registries do.
    async fn hiding_registry(challenge: fn(&str) -> String) -> Server {
        serve(move |addr| {
            let challenge = challenge(&addr);
            move |seen: &Seen| match (seen.path.as_str(), seen.authorization.as_deref()) {
                ("/v2/", _) => Answer::new(401, b"").header("WWW-Authenticate", &challenge),
                ("/token", Some(BASIC)) => Answer::new(
                    200,
                    format!(r#"{{"token":"{TOKEN}","expires_in":300}}"#).as_bytes(),
                ),
                (path, Some(auth))
                    if path.starts_with("/v2/team/")
                        && !path.ends_with("/missing")
                        && (auth == BASIC || auth == format!("Bearer {TOKEN}")) =>
                {
                    Answer::new(200, MANIFEST)
                }
                (path, _) if path.starts_with("/v2/team/forbidden/") => Answer::new(403, b""),
                _ => Answer::new(404, b""),
            }
        })
        .await
    }

    #[tokio::test]
    async fn private_repository_hidden_behind_404_or_403_is_read_with_the_credentials() {
        let bearer = |addr: &str| format!(r#"Bearer realm="http://{addr}/token",service="reg""#);
        let basic_challenge = |_: &str| r#"Basic realm="reg""#.to_string();
        for (kind, challenge) in [
            ("bearer", bearer as fn(&str) -> String),
            ("basic", basic_challenge),
        ] {
            let server = hiding_registry(challenge).await;
            let reader = server.reader();
            for repository in ["team/app", "team/forbidden"] {
                let (body, _) =
                    json_manifest(&reader, &server, &format!("{repository}:v1"), &basic())
                        .await
                        .unwrap_or_else(|e| panic!("{kind} {repository}: {e}"));
                assert_eq!(body, MANIFEST);
            }
            // The challenge was asked for once; later reads carry the credentials up front.
            json_manifest(&reader, &server, "team/app:v2", &basic())
                .await
                .expect("again");
            assert_eq!(
                server.seen("/v2/").len(),
                1 + usize::from(kind == "bearer"),
                "{kind}"
            );
            assert!(
                server.seen("/v2/team/app/manifests/v2")[0]
                    .authorization
                    .is_some(),
                "{kind}: the second read did not send the credentials first"
            );

            // Really missing: the 404 stands once the credentials were offered.
            let error = json_manifest(&reader, &server, "team/app:missing", &basic())
                .await
                .expect_err("missing");
            assert!(
                matches!(
                    oci(error),
                    OciDistributionError::ServerError { code: 404, .. }
                ),
                "{kind}"
            );
            // Anonymous callers get the registry's answer; /v2/ is not asked for them.
            let probes = server.seen("/v2/").len();
            let error = json_manifest(&reader, &server, "team/app:v1", &RegistryAuth::Anonymous)
                .await
                .expect_err("anonymous");
            assert!(
                matches!(
                    oci(error),
                    OciDistributionError::ServerError { code: 404, .. }
                ),
                "{kind}"
            );
            assert_eq!(server.seen("/v2/").len(), probes, "{kind}");
        }
    }

    #[tokio::test]
    async fn a_challenge_from_a_redirect_target_is_not_met() {
        // `elsewhere` asks for credentials (Basic, and a token service of its own); the
        // registry redirects its manifest there. Our credentials must not follow.
        let elsewhere = serve(|addr| {
            let bearer = format!(r#"Bearer realm="http://{addr}/token",service="x""#);
            move |seen: &Seen| {
                let challenge = if seen.path.contains("bearer") {
                    bearer.as_str()
                } else {
                    r#"Basic realm="x""#
                };
                Answer::new(401, b"").header("WWW-Authenticate", challenge)
            }
        })
        .await;
        let target = elsewhere.addr.clone();
        let registry = serve(move |_| {
            move |seen: &Seen| {
                Answer::new(302, b"").header("Location", &format!("http://{target}{}", seen.path))
            }
        })
        .await;
        let reader = registry.reader();
        for tag in ["basic", "bearer"] {
            let error = json_manifest(&reader, &registry, &format!("team/app:{tag}"), &basic())
                .await
                .expect_err("a foreign challenge");
            assert!(
                matches!(oci(error), OciDistributionError::UnauthorizedError { .. }),
                "{tag}"
            );
        }
        let seen = elsewhere.seen.lock().expect("seen").clone();
        assert!(!seen.is_empty(), "the redirect was not followed");
        assert!(
            seen.iter()
                .all(|s| s.authorization.is_none() && s.path != "/token"),
            "credentials went to the redirect target: {seen:?}"
        );
    }

    #[test]
    fn token_cache_is_bounded_per_registry_in_count_and_in_bytes() {
        let reader = BoundedReader::new(Vec::new()).expect("reader");
        let now = Instant::now();
        let token = |text: String, seconds: u64| CachedToken {
            token: text,
            until: now + Duration::from_secs(seconds),
        };
        let key = |registry: &str, repository: String| {
            TokenKey::new(registry, &repository, &RegistryAuth::Anonymous)
        };
        // Another tenant's registry holds a token that expires soonest of all.
        reader.remember_token(key("good.example", "app".into()), token("good".into(), 100));
        // A registry with many repositories only pushes out its own tokens.
        for n in 0..500 {
            reader.remember_token(
                key("hostile.example", format!("r{n}")),
                token(format!("t{n}"), 1000 + n),
            );
        }
        let tokens = lock(&reader.tokens);
        assert_eq!(
            tokens
                .keys()
                .filter(|k| k.registry == "hostile.example")
                .count(),
            MAX_TOKENS_PER_REGISTRY
        );
        // The ones kept are those that live longest.
        assert!(tokens.contains_key(&key("hostile.example", "r499".into())));
        assert!(!tokens.contains_key(&key("hostile.example", "r0".into())));
        drop(tokens);
        assert_eq!(
            reader
                .cached_token(&key("good.example", "app".into()))
                .as_deref(),
            Some("good")
        );

        // A huge token is used but never kept.
        reader.remember_token(
            key("big.example", "a".into()),
            token("x".repeat(MAX_CACHED_TOKEN_BYTES + 1), 1000),
        );
        assert_eq!(reader.cached_token(&key("big.example", "a".into())), None);

        // Many registries with large tokens: the bytes stay bounded.
        let large = MAX_CACHED_TOKEN_BYTES;
        for n in 0..400 {
            reader.remember_token(
                key(&format!("r{n}.example"), "a".into()),
                token("y".repeat(large), 2000),
            );
        }
        let tokens = lock(&reader.tokens);
        assert!(token_bytes(&tokens) <= MAX_TOKEN_CACHE_BYTES);
        assert!(tokens.len() <= MAX_CACHED_TOKENS);
        assert!(
            tokens.contains_key(&key("r399.example", "a".into())),
            "the newest was not kept"
        );
    }

    #[test]
    fn token_keys_of_different_credentials_differ() {
        let key = |auth: RegistryAuth| TokenKey::new("r", "a", &auth);
        let split_one = key(RegistryAuth::Basic("a\0b".into(), "c".into()));
        let split_two = key(RegistryAuth::Basic("a".into(), "b\0c".into()));
        assert!(split_one != split_two);
        assert!(key(RegistryAuth::Bearer("one".into())) != key(RegistryAuth::Bearer("two".into())));
        assert!(key(RegistryAuth::Anonymous) != key(RegistryAuth::Bearer(String::new())));
    }
}
