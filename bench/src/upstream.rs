//! The harness's own upstream: a hyper HTTP/1.1 + HTTP/2 server answering every request with a
//! body of the configured size.

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;

/// Start the upstream on its own thread and runtime; returns its address.
pub fn start(body_size: usize) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let body = Bytes::from(vec![b'x'; body_size]);
    std::thread::Builder::new()
        .name("bench-upstream".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("upstream runtime");
            rt.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("upstream listener");
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let body = body.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(
                            move |_req: http::Request<hyper::body::Incoming>| {
                                let body = body.clone();
                                async move {
                                    Ok::<_, std::convert::Infallible>(http::Response::new(
                                        Full::new(body),
                                    ))
                                }
                            },
                        );
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
        })?;
    Ok(addr)
}
