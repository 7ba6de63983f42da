//! A blocking CRI v1 client: the calls kubelet makes, over containerd's Unix socket.
//!
//! The tests are synchronous, so the client owns a current-thread tokio runtime and blocks on
//! each call. Every call answers `Result<_, tonic::Status>`: a refusal's message is what
//! kubelet would show in a pod's events, and tests assert on it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as api;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Status;

/// Longest a single call may take (creating a container unpacks nothing here, but a runtime
/// under test may hang; a test should fail, not stall).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

/// The answer of [`Cri::exec_sync`].
#[derive(Debug)]
pub struct ExecOutput {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
}

impl Cri {
    /// Connects to the CRI socket at `socket` (the connection is made at once, so a daemon
    /// that does not listen yet is an error, not a hang).
    pub fn connect(socket: &Path) -> Result<Cri, tonic::transport::Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let socket: PathBuf = socket.to_path_buf();
        // The URI is a placeholder: the connector below ignores it and dials the socket.
        let endpoint = Endpoint::from_static("http://[::1]:1")
            .connect_timeout(Duration::from_secs(5))
            .timeout(CALL_TIMEOUT);
        let channel = rt.block_on(endpoint.connect_with_connector(tower::service_fn(
            move |_: Uri| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            },
        )))?;
        Ok(Cri {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    pub fn version(&mut self) -> Result<api::VersionResponse, Status> {
        let call = self.runtime.version(api::VersionRequest {
            version: "v1".into(),
        });
        Ok(self.rt.block_on(call)?.into_inner())
    }

    /// The image's status as CRI sees it (None: CRI does not know the image).
    pub fn image_status(&mut self, image: &str) -> Result<Option<api::Image>, Status> {
        let call = self.images.image_status(api::ImageStatusRequest {
            image: Some(image_spec(image)),
            verbose: false,
        });
        Ok(self.rt.block_on(call)?.into_inner().image)
    }

    /// RunPodSandbox with runtime handler `handler` (a RuntimeClass's `handler`): the pod's id.
    pub fn run_pod_sandbox(
        &mut self,
        config: &api::PodSandboxConfig,
        handler: &str,
    ) -> Result<String, Status> {
        let call = self.runtime.run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        });
        Ok(self.rt.block_on(call)?.into_inner().pod_sandbox_id)
    }

    /// PodSandboxStatus, verbose: the status and containerd's `info` (pid, runtime spec...).
    pub fn pod_sandbox_status(
        &mut self,
        pod: &str,
    ) -> Result<(api::PodSandboxStatus, serde_json::Value), Status> {
        let call = self
            .runtime
            .pod_sandbox_status(api::PodSandboxStatusRequest {
                pod_sandbox_id: pod.into(),
                verbose: true,
            });
        let answer = self.rt.block_on(call)?.into_inner();
        Ok((answer.status.unwrap_or_default(), info_of(&answer.info)))
    }

    pub fn list_pod_sandboxes(&mut self) -> Result<Vec<api::PodSandbox>, Status> {
        let call = self
            .runtime
            .list_pod_sandbox(api::ListPodSandboxRequest { filter: None });
        Ok(self.rt.block_on(call)?.into_inner().items)
    }

    /// CreateContainer in `pod` (created with `pod_config`): the container's id.
    pub fn create_container(
        &mut self,
        pod: &str,
        config: &api::ContainerConfig,
        pod_config: &api::PodSandboxConfig,
    ) -> Result<String, Status> {
        let call = self.runtime.create_container(api::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config.clone()),
            sandbox_config: Some(pod_config.clone()),
        });
        Ok(self.rt.block_on(call)?.into_inner().container_id)
    }

    pub fn start_container(&mut self, id: &str) -> Result<(), Status> {
        let call = self.runtime.start_container(api::StartContainerRequest {
            container_id: id.into(),
        });
        self.rt.block_on(call)?;
        Ok(())
    }

    /// ContainerStatus, verbose: the status and containerd's `info` (pid, runtime spec...).
    pub fn container_status(
        &mut self,
        id: &str,
    ) -> Result<(api::ContainerStatus, serde_json::Value), Status> {
        let call = self.runtime.container_status(api::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        });
        let answer = self.rt.block_on(call)?.into_inner();
        Ok((answer.status.unwrap_or_default(), info_of(&answer.info)))
    }

    /// ExecSync of `cmd` in container `id`, ended after `timeout_s` seconds (0: no limit).
    pub fn exec_sync(
        &mut self,
        id: &str,
        cmd: &[&str],
        timeout_s: i64,
    ) -> Result<ExecOutput, Status> {
        let call = self.runtime.exec_sync(api::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout_s,
        });
        let answer = self.rt.block_on(call)?.into_inner();
        Ok(ExecOutput {
            stdout: String::from_utf8_lossy(&answer.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&answer.stderr).into_owned(),
            exit_code: answer.exit_code,
        })
    }

    pub fn container_stats(&mut self, id: &str) -> Result<api::ContainerStats, Status> {
        let call = self.runtime.container_stats(api::ContainerStatsRequest {
            container_id: id.into(),
        });
        let stats = self.rt.block_on(call)?.into_inner().stats;
        stats.ok_or_else(|| Status::not_found(format!("no stats for {id}")))
    }

    pub fn update_container_resources(
        &mut self,
        id: &str,
        resources: &api::LinuxContainerResources,
    ) -> Result<(), Status> {
        let call = self
            .runtime
            .update_container_resources(api::UpdateContainerResourcesRequest {
                container_id: id.into(),
                linux: Some(resources.clone()),
                ..Default::default()
            });
        self.rt.block_on(call)?;
        Ok(())
    }

    /// StopContainer: the stop signal, then SIGKILL after `timeout_s` (0: SIGKILL at once).
    pub fn stop_container(&mut self, id: &str, timeout_s: i64) -> Result<(), Status> {
        let call = self.runtime.stop_container(api::StopContainerRequest {
            container_id: id.into(),
            timeout: timeout_s,
        });
        self.rt.block_on(call)?;
        Ok(())
    }

    pub fn remove_container(&mut self, id: &str) -> Result<(), Status> {
        let call = self.runtime.remove_container(api::RemoveContainerRequest {
            container_id: id.into(),
        });
        self.rt.block_on(call)?;
        Ok(())
    }

    pub fn stop_pod_sandbox(&mut self, pod: &str) -> Result<(), Status> {
        let call = self.runtime.stop_pod_sandbox(api::StopPodSandboxRequest {
            pod_sandbox_id: pod.into(),
        });
        self.rt.block_on(call)?;
        Ok(())
    }

    pub fn remove_pod_sandbox(&mut self, pod: &str) -> Result<(), Status> {
        let call = self
            .runtime
            .remove_pod_sandbox(api::RemovePodSandboxRequest {
                pod_sandbox_id: pod.into(),
            });
        self.rt.block_on(call)?;
        Ok(())
    }

    /// ListContainers, of pod `pod` only if given.
    pub fn list_containers(&mut self, pod: Option<&str>) -> Result<Vec<api::Container>, Status> {
        let filter = pod.map(|pod| api::ContainerFilter {
            pod_sandbox_id: pod.into(),
            ..Default::default()
        });
        let call = self
            .runtime
            .list_containers(api::ListContainersRequest { filter });
        Ok(self.rt.block_on(call)?.into_inner().containers)
    }
}

fn image_spec(image: &str) -> api::ImageSpec {
    api::ImageSpec {
        image: image.into(),
        ..Default::default()
    }
}

/// containerd's verbose `info` map holds one JSON document under `info`.
fn info_of(info: &HashMap<String, String>) -> serde_json::Value {
    info.get("info")
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// The namespaces kubelet asks for: the pod's network and IPC, and the pid namespace `pid`
/// (Container, its default; Pod with `shareProcessNamespace`).
pub fn kubelet_namespaces(pid: api::NamespaceMode) -> Option<api::NamespaceOption> {
    Some(api::NamespaceOption {
        network: api::NamespaceMode::Pod as i32,
        pid: pid as i32,
        ipc: api::NamespaceMode::Pod as i32,
        ..Default::default()
    })
}

/// Kubelet's namespace options ([`kubelet_namespaces`]) in the sandbox's and a container's
/// config.
pub fn set_kubelet_namespaces(
    sandbox: &mut api::PodSandboxConfig,
    container: Option<&mut api::ContainerConfig>,
    pid: api::NamespaceMode,
) {
    if let Some(linux) = sandbox.linux.as_mut() {
        linux.security_context = Some(api::LinuxSandboxSecurityContext {
            namespace_options: kubelet_namespaces(pid),
            ..Default::default()
        });
    }
    if let Some(linux) = container.and_then(|c| c.linux.as_mut()) {
        linux.security_context = Some(api::LinuxContainerSecurityContext {
            namespace_options: kubelet_namespaces(pid),
            ..Default::default()
        });
    }
}

/// A pod's configuration as kubelet sends it: name, namespace and uid as metadata, the cgroup
/// parent (cgroupfs driver), and a log directory (without it containerd keeps no logs).
pub fn pod_config(name: &str, cgroup_parent: &str, log_directory: &Path) -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}-{}", std::process::id()),
            namespace: "burrow-test".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_directory.display().to_string(),
        linux: Some(api::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container's configuration: `image` running `args` (the image's entrypoint is replaced by
/// `args[0]`), logging to `NAME.log` in the pod's log directory, with a memory limit if given.
pub fn container_config(
    name: &str,
    image: &str,
    args: &[&str],
    memory_limit: Option<i64>,
) -> api::ContainerConfig {
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(image_spec(image)),
        command: args.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(api::LinuxContainerConfig {
            resources: memory_limit.map(|bytes| api::LinuxContainerResources {
                memory_limit_in_bytes: bytes,
                ..Default::default()
            }),
            security_context: None,
        }),
        ..Default::default()
    }
}
