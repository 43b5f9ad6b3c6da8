//! containerd's own Tasks API (`containerd.services.tasks.v1.Tasks`, served on the same socket
//! as CRI, namespace `k8s.io`): the calls the kubelet needs that CRI offers only through its
//! streaming server. Messages are written out here, field numbers as in containerd's
//! `api/services/tasks/v1/tasks.proto` and `api/types/task/task.proto`.
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::MetadataValue;
use tonic::transport::{Endpoint, Uri};

/// `ResizePtyRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResizePtyRequest {
    /// The container (= task) ID.
    #[prost(string, tag = "1")]
    pub container_id: String,
    /// The exec process; empty for the task's init process.
    #[prost(string, tag = "2")]
    pub exec_id: String,
    /// Columns.
    #[prost(uint32, tag = "3")]
    pub width: u32,
    /// Rows.
    #[prost(uint32, tag = "4")]
    pub height: u32,
}

/// `GetRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetRequest {
    /// The container (= task) ID.
    #[prost(string, tag = "1")]
    pub container_id: String,
    /// The exec process; empty for the init process.
    #[prost(string, tag = "2")]
    pub exec_id: String,
}

/// `GetResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetResponse {
    /// The process.
    #[prost(message, optional, tag = "1")]
    pub process: Option<Process>,
}

/// `containerd.v1.types.Process`, the fields read here.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Process {
    /// PID on the host.
    #[prost(uint32, tag = "3")]
    pub pid: u32,
    /// `Status`: 1 created, 2 running, 3 stopped.
    #[prost(int32, tag = "4")]
    pub status: i32,
}

/// `google.protobuf.Empty`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

/// `Status.RUNNING`.
pub const RUNNING: i32 = 2;

async fn call<Req, Resp>(
    socket: &Path,
    method: &'static str,
    req: Req,
) -> Result<Resp, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let path: PathBuf = socket.to_path_buf();
    let ch = Endpoint::try_from("http://[::]")
        .map_err(|e| tonic::Status::internal(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
            }
        }))
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut r = tonic::Request::new(req);
    r.metadata_mut()
        .insert("containerd-namespace", MetadataValue::from_static("k8s.io"));
    r.set_timeout(Duration::from_secs(10));
    grpc.unary(
        r,
        PathAndQuery::from_static(method),
        tonic_prost::ProstCodec::<Req, Resp>::default(),
    )
    .await
    .map(tonic::Response::into_inner)
}

/// Sets the terminal size of process `exec_id` (empty: the init process) of task `cid`.
pub async fn resize_pty(
    socket: &Path,
    cid: &str,
    exec_id: &str,
    size: crate::stream::TerminalSize,
) -> Result<(), tonic::Status> {
    let req = ResizePtyRequest {
        container_id: cid.into(),
        exec_id: exec_id.into(),
        width: size.width.into(),
        height: size.height.into(),
    };
    call::<_, Empty>(socket, "/containerd.services.tasks.v1.Tasks/ResizePty", req)
        .await
        .map(|_| ())
}

/// The status of process `exec_id` of task `cid` (see [`Process::status`]).
pub async fn process_status(socket: &Path, cid: &str, exec_id: &str) -> Result<i32, tonic::Status> {
    let req = GetRequest {
        container_id: cid.into(),
        exec_id: exec_id.into(),
    };
    let resp: GetResponse = call(socket, "/containerd.services.tasks.v1.Tasks/Get", req).await?;
    Ok(resp.process.map(|p| p.status).unwrap_or_default())
}
