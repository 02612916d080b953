//! Kubernetes metadata of traced processes: pod, namespace, workload, node and container name,
//! from the Kubernetes API, named after OpenTelemetry's `k8s.*` resource conventions.
//!
//! A watch-backed cache (kube's reflector) holds the pods of this node only (field selector
//! `spec.nodeName=<node>`), plus the metadata of ReplicaSets and Jobs, to name the Deployment or
//! CronJob that owns a pod's ReplicaSet or Job. A process is matched to its pod by the container
//! id in its cgroup (see [`crate::process::container`]), or by the pod uid in the cgroup path while the
//! pod's status does not list the container yet.
//!
//! The API calls are `list` and `watch` of pods (on this node), replicasets and jobs: the
//! ClusterRole in `deploy/` grants exactly these.

use crate::process::container::{ContainerId, strip_runtime_prefix};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use std::collections::BTreeMap;

/// The API calls the agent makes: (API group, resource, verbs). The ClusterRoles in `deploy/`
/// are tested against this list.
pub const API_ACCESS: &[(&str, &str, &[&str])] = &[
    ("", "pods", &["list", "watch"]),
    ("apps", "replicasets", &["list", "watch"]),
    ("batch", "jobs", &["list", "watch"]),
];

/// Pod annotation that names the service (OpenTelemetry convention).
pub const SERVICE_NAME_ANNOTATION: &str = "resource.opentelemetry.io/service.name";
/// Recommended Kubernetes label naming the application.
pub const APP_NAME_LABEL: &str = "app.kubernetes.io/name";

/// The owner of a ReplicaSet or Job, as the cache knows it.
pub trait Owners {
    /// The controller owning the object `kind` (`ReplicaSet` or `Job`) `namespace/name`.
    fn controller_of(&self, kind: &str, namespace: &str, name: &str) -> Option<OwnerReference>;
}

/// No owner information (tests, or before the caches are filled).
pub struct NoOwners;
impl Owners for NoOwners {
    fn controller_of(&self, _: &str, _: &str, _: &str) -> Option<OwnerReference> {
        None
    }
}

/// What a process learns from its pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `k8s.*` resource attributes.
    pub attributes: Vec<(String, String)>,
    /// The service name Kubernetes suggests (annotation, `app.kubernetes.io/name`, workload,
    /// pod), used when the process's environment names none.
    pub service_name: Option<String>,
}

fn controller(refs: Option<&Vec<OwnerReference>>) -> Option<&OwnerReference> {
    let refs = refs?;
    refs.iter().find(|r| r.controller == Some(true)).or_else(|| refs.first())
}

/// The name of the container `container_id` (runtime prefix already stripped) in `pod`.
pub fn container_name(pod: &Pod, container_id: &str) -> Option<String> {
    let status = pod.status.as_ref()?;
    [&status.container_statuses, &status.init_container_statuses, &status.ephemeral_container_statuses]
        .into_iter()
        .flatten()
        .flatten()
        .find(|s| s.container_id.as_deref().is_some_and(|id| strip_runtime_prefix(id) == container_id))
        .map(|s| s.name.clone())
}

/// Maps a pod (and the container of the process in it) to resource attributes.
pub fn identify(pod: &Pod, container_id: Option<&str>, owners: &dyn Owners) -> PodIdentity {
    let meta = &pod.metadata;
    let namespace = meta.namespace.clone().unwrap_or_default();
    let name = meta.name.clone().unwrap_or_default();
    let labels = meta.labels.clone().unwrap_or_default();
    let mut attributes =
        vec![("k8s.namespace.name".to_string(), namespace.clone()), ("k8s.pod.name".to_string(), name.clone())];
    if let Some(uid) = &meta.uid {
        attributes.push(("k8s.pod.uid".into(), uid.clone()));
    }
    if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
        attributes.push(("k8s.node.name".into(), node));
    }
    if let Some(c) = container_id.and_then(|id| container_name(pod, id)) {
        attributes.push(("k8s.container.name".into(), c));
    }
    let mut workload = None;
    if let Some(owner) = controller(meta.owner_references.as_ref()) {
        match owner.kind.as_str() {
            "ReplicaSet" => {
                attributes.push(("k8s.replicaset.name".into(), owner.name.clone()));
                let deployment = match owners.controller_of("ReplicaSet", &namespace, &owner.name) {
                    Some(d) if d.kind == "Deployment" => Some(d.name),
                    Some(_) => None,
                    // Not in the cache (yet): a Deployment names its ReplicaSets
                    // `<deployment>-<pod-template-hash>`, and the pod carries that hash.
                    None => labels
                        .get("pod-template-hash")
                        .and_then(|h| owner.name.strip_suffix(&format!("-{h}")))
                        .map(str::to_owned),
                };
                if let Some(d) = deployment {
                    attributes.push(("k8s.deployment.name".into(), d.clone()));
                    workload = Some(d);
                } else {
                    workload = Some(owner.name.clone());
                }
            }
            "StatefulSet" => {
                attributes.push(("k8s.statefulset.name".into(), owner.name.clone()));
                workload = Some(owner.name.clone());
            }
            "DaemonSet" => {
                attributes.push(("k8s.daemonset.name".into(), owner.name.clone()));
                workload = Some(owner.name.clone());
            }
            "Job" => {
                attributes.push(("k8s.job.name".into(), owner.name.clone()));
                workload = Some(owner.name.clone());
                if let Some(c) = owners.controller_of("Job", &namespace, &owner.name).filter(|c| c.kind == "CronJob") {
                    attributes.push(("k8s.cronjob.name".into(), c.name.clone()));
                    workload = Some(c.name);
                }
            }
            _ => {}
        }
    }
    let service_name = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(SERVICE_NAME_ANNOTATION).cloned())
        .or_else(|| labels.get(APP_NAME_LABEL).cloned())
        .or(workload)
        .or_else(|| Some(name.clone()).filter(|n| !n.is_empty()));
    PodIdentity { namespace, name, labels, attributes, service_name }
}

/// Finds the pod of a container among `pods`: by container id in the pod status, else by the
/// pod uid of the cgroup path. Returns the pod and whether the container itself was found.
pub fn find_pod<'a>(pods: impl IntoIterator<Item = &'a Pod>, c: &ContainerId) -> Option<&'a Pod> {
    let mut by_uid = None;
    for pod in pods {
        if container_name(pod, &c.id).is_some() {
            return Some(pod);
        }
        if c.pod_uid.is_some() && pod.metadata.uid.as_deref().map(|u| u.replace('_', "-")) == c.pod_uid {
            by_uid = Some(pod);
        }
    }
    by_uid
}

mod cache {
    use super::*;
    use futures_util::StreamExt as _;
    use kube::core::PartialObjectMeta;
    use kube::runtime::reflector::{self, ObjectRef, Store};
    use kube::runtime::{WatchStreamExt as _, watcher};
    use kube::{Api, Client};
    use log::{info, warn};

    /// Watch-backed caches of this node's pods and of ReplicaSet and Job owners.
    #[derive(Clone)]
    pub struct Cache {
        pods: Store<Pod>,
        replicasets: Store<PartialObjectMeta<ReplicaSet>>,
        jobs: Store<PartialObjectMeta<Job>>,
    }

    impl Owners for Cache {
        fn controller_of(&self, kind: &str, namespace: &str, name: &str) -> Option<OwnerReference> {
            let refs = match kind {
                "ReplicaSet" => {
                    self.replicasets.get(&ObjectRef::new(name).within(namespace))?.metadata.owner_references.clone()
                }
                "Job" => self.jobs.get(&ObjectRef::new(name).within(namespace))?.metadata.owner_references.clone(),
                _ => None,
            };
            controller(refs.as_ref()).cloned()
        }
    }

    impl Cache {
        /// Connects to the API server (in-cluster config or kubeconfig) and starts the watches
        /// on the current tokio runtime.
        pub async fn start(node: &str) -> anyhow::Result<Self> {
            let client = Client::try_default().await?;
            // One request up front, so that a cluster that is not there, or RBAC that forbids
            // the watch, is reported at start instead of retried silently.
            let pods_api: Api<Pod> = Api::all(client.clone());
            let field = format!("spec.nodeName={node}");
            let lp = kube::api::ListParams::default().fields(&field).limit(1);
            pods_api.list_metadata(&lp).await?;

            let (pods, w) = reflector::store();
            let stream = reflector::reflector(w, watcher(pods_api, watcher::Config::default().fields(&field)));
            spawn_drain("pods", stream);
            let (replicasets, w) = reflector::store();
            // Metadata only: owner references are all the agent reads of these.
            let rs_api: Api<PartialObjectMeta<ReplicaSet>> = Api::all(client.clone());
            spawn_drain("replicasets", reflector::reflector(w, watcher(rs_api, watcher::Config::default())));
            let (jobs, w) = reflector::store();
            let job_api: Api<PartialObjectMeta<Job>> = Api::all(client);
            spawn_drain("jobs", reflector::reflector(w, watcher(job_api, watcher::Config::default())));
            let cache = Self { pods, replicasets, jobs };
            let ready = cache.pods.clone();
            let node = node.to_owned();
            tokio::spawn(async move {
                if ready.wait_until_ready().await.is_ok() {
                    info!("kubernetes: watching {} pods on node {node}", ready.state().len());
                }
            });
            Ok(cache)
        }

        /// The pod of a container, mapped to its identity.
        pub fn lookup(&self, c: &ContainerId) -> Option<PodIdentity> {
            let pods = self.pods.state();
            let pod = find_pod(pods.iter().map(|p| p.as_ref()), c)?;
            Some(identify(pod, Some(&c.id), self))
        }
    }

    fn spawn_drain<S, T>(what: &'static str, stream: S)
    where
        S: futures_util::Stream<Item = Result<watcher::Event<T>, watcher::Error>> + Send + 'static,
        T: Send + 'static,
    {
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream.default_backoff());
            let mut failing = false;
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(_) => failing = false,
                    Err(e) if !failing => {
                        warn!("kubernetes: watching {what}: {e} (retrying)");
                        failing = true;
                    }
                    Err(_) => {}
                }
            }
        });
    }
}

pub use cache::Cache;

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod as the API server returns it (JSON), owned by `owner`.
    fn pod(owner_kind: &str, owner_name: &str, extra_labels: &str) -> Pod {
        let json = format!(
            r#"{{
  "apiVersion": "v1", "kind": "Pod",
  "metadata": {{
    "name": "checkout-5d8f7c9b4-x2x9q", "namespace": "shop",
    "uid": "0125ec2f-b64a-4868-8f5b-94b56cbab864",
    "labels": {{"pod-template-hash": "5d8f7c9b4" {extra_labels}}},
    "ownerReferences": [{{"apiVersion": "apps/v1", "kind": "{owner_kind}", "name": "{owner_name}",
                          "uid": "9a1c1f0e-0000-4000-8000-000000000001", "controller": true, "blockOwnerDeletion": true}}]
  }},
  "spec": {{"nodeName": "node-a", "containers": [{{"name": "app", "image": "shop/checkout:1"}}, {{"name": "proxy", "image": "envoy"}}]}},
  "status": {{
    "phase": "Running",
    "containerStatuses": [
      {{"name": "app", "containerID": "containerd://ee4b20e90ac7f42a10bd004d05646b13d8ab5e2c5e7cbc01abf8006bac016459",
        "image": "shop/checkout:1", "imageID": "", "ready": true, "restartCount": 0}},
      {{"name": "proxy", "containerID": "cri-o://d0b3604b67ac7930dd34ba3a796627e3e4717d12309e90a4afe3f38b6816ac98",
        "image": "envoy", "imageID": "", "ready": true, "restartCount": 0}}
    ]
  }}
}}"#
        );
        serde_json::from_str(&json).unwrap()
    }

    fn attr<'a>(id: &'a PodIdentity, key: &str) -> Option<&'a str> {
        id.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    struct Map(Vec<(&'static str, &'static str, &'static str, &'static str)>);
    impl Owners for Map {
        fn controller_of(&self, kind: &str, _ns: &str, name: &str) -> Option<OwnerReference> {
            self.0.iter().find(|(k, n, _, _)| *k == kind && *n == name).map(|(_, _, ok, on)| OwnerReference {
                api_version: "apps/v1".into(),
                kind: ok.to_string(),
                name: on.to_string(),
                uid: "u".into(),
                controller: Some(true),
                block_owner_deletion: None,
            })
        }
    }

    const APP: &str = "ee4b20e90ac7f42a10bd004d05646b13d8ab5e2c5e7cbc01abf8006bac016459";

    #[test]
    fn deployment_through_replicaset_owner() {
        let p = pod("ReplicaSet", "checkout-5d8f7c9b4", "");
        let owners = Map(vec![("ReplicaSet", "checkout-5d8f7c9b4", "Deployment", "checkout")]);
        let id = identify(&p, Some(APP), &owners);
        assert_eq!(attr(&id, "k8s.namespace.name"), Some("shop"));
        assert_eq!(attr(&id, "k8s.pod.name"), Some("checkout-5d8f7c9b4-x2x9q"));
        assert_eq!(attr(&id, "k8s.pod.uid"), Some("0125ec2f-b64a-4868-8f5b-94b56cbab864"));
        assert_eq!(attr(&id, "k8s.node.name"), Some("node-a"));
        assert_eq!(attr(&id, "k8s.container.name"), Some("app"));
        assert_eq!(attr(&id, "k8s.replicaset.name"), Some("checkout-5d8f7c9b4"));
        assert_eq!(attr(&id, "k8s.deployment.name"), Some("checkout"));
        assert_eq!(id.service_name.as_deref(), Some("checkout"));
        // The other container of the pod is named by its own id (CRI-O prefix).
        let id = identify(&p, Some("d0b3604b67ac7930dd34ba3a796627e3e4717d12309e90a4afe3f38b6816ac98"), &owners);
        assert_eq!(attr(&id, "k8s.container.name"), Some("proxy"));
        // A ReplicaSet owned by something else is no deployment.
        let id = identify(&p, Some(APP), &Map(vec![("ReplicaSet", "checkout-5d8f7c9b4", "Rollout", "x")]));
        assert_eq!(attr(&id, "k8s.deployment.name"), None);
        assert_eq!(attr(&id, "k8s.replicaset.name"), Some("checkout-5d8f7c9b4"));
    }

    #[test]
    fn deployment_from_pod_template_hash_before_the_cache_has_the_replicaset() {
        let id = identify(&pod("ReplicaSet", "checkout-5d8f7c9b4", ""), Some(APP), &NoOwners);
        assert_eq!(attr(&id, "k8s.deployment.name"), Some("checkout"));
        // A ReplicaSet not named after the hash: no guess.
        let id = identify(&pod("ReplicaSet", "bare-rs", ""), Some(APP), &NoOwners);
        assert_eq!(attr(&id, "k8s.deployment.name"), None);
        assert_eq!(id.service_name.as_deref(), Some("bare-rs"));
    }

    #[test]
    fn statefulset_daemonset_job_cronjob() {
        let id = identify(&pod("StatefulSet", "db", ""), Some(APP), &NoOwners);
        assert_eq!(attr(&id, "k8s.statefulset.name"), Some("db"));
        assert_eq!(attr(&id, "k8s.replicaset.name"), None);
        let id = identify(&pod("DaemonSet", "agent", ""), Some(APP), &NoOwners);
        assert_eq!(attr(&id, "k8s.daemonset.name"), Some("agent"));
        let owners = Map(vec![("Job", "report-29123040", "CronJob", "report")]);
        let id = identify(&pod("Job", "report-29123040", ""), Some(APP), &owners);
        assert_eq!(attr(&id, "k8s.job.name"), Some("report-29123040"));
        assert_eq!(attr(&id, "k8s.cronjob.name"), Some("report"));
        assert_eq!(id.service_name.as_deref(), Some("report"));
        let id = identify(&pod("Job", "once", ""), Some(APP), &NoOwners);
        assert_eq!((attr(&id, "k8s.job.name"), attr(&id, "k8s.cronjob.name")), (Some("once"), None));
    }

    #[test]
    fn service_name_sources() {
        let id = identify(&pod("StatefulSet", "db", r#", "app.kubernetes.io/name": "orders""#), Some(APP), &NoOwners);
        assert_eq!(id.service_name.as_deref(), Some("orders"));
        let mut p = pod("StatefulSet", "db", r#", "app.kubernetes.io/name": "orders""#);
        p.metadata.annotations = Some([(SERVICE_NAME_ANNOTATION.to_string(), "orders-api".to_string())].into());
        assert_eq!(identify(&p, Some(APP), &NoOwners).service_name.as_deref(), Some("orders-api"));
        let mut p = pod("StatefulSet", "db", "");
        p.metadata.owner_references = None;
        assert_eq!(identify(&p, None, &NoOwners).service_name.as_deref(), Some("checkout-5d8f7c9b4-x2x9q"));
    }

    #[test]
    fn finds_pod_by_container_id_then_pod_uid() {
        let a = pod("StatefulSet", "db", "");
        let mut b = pod("StatefulSet", "db", "");
        b.metadata.uid = Some("7d4424e6-bb13-42f4-a47a-45a4828bf54d".into());
        b.metadata.name = Some("other".into());
        b.status = None;
        let pods = [b.clone(), a.clone()];
        let by_id = ContainerId { id: APP.into(), pod_uid: None };
        assert_eq!(find_pod(&pods, &by_id).unwrap().metadata.name, a.metadata.name);
        // A container the status does not list yet: its pod by the uid in the cgroup path.
        let new = ContainerId { id: "f".repeat(64), pod_uid: Some("7d4424e6-bb13-42f4-a47a-45a4828bf54d".into()) };
        assert_eq!(find_pod(&pods, &new).unwrap().metadata.name.as_deref(), Some("other"));
        let unknown = ContainerId { id: "f".repeat(64), pod_uid: None };
        assert!(find_pod(&pods, &unknown).is_none());
        // The container name stays unknown until the status lists it.
        assert_eq!(attr(&identify(&b, Some(&new.id), &NoOwners), "k8s.container.name"), None);
    }
}
