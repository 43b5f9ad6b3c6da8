//! A kube client that speaks HTTP/2 to the apiserver when the server offers it, as client-go
//! does: every request and watch of one component shares one TLS connection. kube's default
//! client speaks HTTP/1.1, one connection per concurrent watch: one `lotse up` held ~120
//! connections to its own apiserver, with read buffers and TLS state on both ends (~7 MiB).
//! Dead connections are found with HTTP/2 pings (client-go's `ReadIdleTimeout` 30 s and
//! `PingTimeout` 15 s) instead of a read timeout, which would cut idle watches.
use std::time::Duration;

use hyper_rustls::FixedServerNameResolver;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::{Body, ConfigExt};
use tower::{BoxError, ServiceBuilder};

/// How long a connection may be quiet before a ping checks it.
const READ_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is closed.
const PING_TIMEOUT: Duration = Duration::from_secs(15);
/// Flow-control windows as Go's HTTP/2 transport sets them: 4 MiB per stream, 1 GiB for the
/// connection, so a watch whose events are not being read holds back only its own stream,
/// never the other requests sharing the connection (hyper's 5 MiB connection default would
/// let two such streams stall everything).
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 1 << 30;

/// A client for `config` that negotiates HTTP/2 (falling back to HTTP/1.1) over TLS, with the
/// same authentication, impersonation headers and base URI as `kube::Client::try_from(config)`.
/// Not for WebSocket upgrades (exec, attach, port-forward), which need HTTP/1.1.
pub fn client(config: kube::Config) -> Result<kube::Client, kube::Error> {
    // ALPN (h2, then http/1.1) is set by the connector builder.
    let tls = config.rustls_client_config()?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(config.connect_timeout);
    let mut builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    if let Some(name) = &config.tls_server_name {
        let name = name.clone().try_into().map_err(|e| {
            kube::Error::Service(format!("invalid tls-server-name {name:?}: {e}").into())
        })?;
        builder = builder.with_server_name_resolver(FixedServerNameResolver::new(name));
    }
    let https = builder.enable_all_versions().wrap_connector(http);
    let hyper: HyperClient<_, Body> = HyperClient::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .http2_keep_alive_interval(READ_IDLE_TIMEOUT)
        .http2_keep_alive_timeout(PING_TIMEOUT)
        .http2_initial_stream_window_size(STREAM_WINDOW)
        .http2_initial_connection_window_size(CONNECTION_WINDOW)
        .build(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(hyper);
    Ok(kube::Client::new(service, config.default_namespace))
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_client_is_built_for_an_https_server_with_or_without_a_server_name() {
        let mut config = kube::Config::new("https://127.0.0.1:6443".parse().expect("url"));
        assert!(super::client(config.clone()).is_ok());
        config.tls_server_name = Some("kubernetes".into());
        assert!(super::client(config.clone()).is_ok());
        config.tls_server_name = Some("not a name!".into());
        assert!(super::client(config).is_err());
    }
}
