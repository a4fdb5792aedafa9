//! How the load balancer reaches instances: inside each instance's own
//! network namespace, on the group's port.

use std::sync::Weak;
use std::time::Duration;

use crate::fleet::Inner;

pub(crate) struct FleetConnector {
    pub(crate) inner: Weak<Inner>,
    pub(crate) port: u16,
}

impl kiln_lb::Connector for FleetConnector {
    fn connect(
        &self,
        backend: &str,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<tokio::net::TcpStream>> + Send + '_>,
    > {
        let backend = backend.to_string();
        Box::pin(async move {
            let gone = || {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("instance {backend} is not running"),
                )
            };
            let inner = self.inner.upgrade().ok_or_else(gone)?;
            let machine = inner
                .live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&backend)
                .cloned()
                .ok_or_else(gone)?;
            let port = self.port;
            let stream =
                tokio::task::spawn_blocking(move || machine.connect(port, Duration::from_secs(2)))
                    .await
                    .map_err(std::io::Error::other)??;
            stream.set_nonblocking(true)?;
            tokio::net::TcpStream::from_std(stream)
        })
    }
}
