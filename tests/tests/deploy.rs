//! Offline checks of the deployment files in `deploy/`: the Kubernetes manifests and the Helm
//! chart (rendered with `helm template`) parse into typed Kubernetes objects without losing a
//! field (a misspelled or unknown field fails), and say what the agent needs: hostPID, no
//! privileged mode, exactly the agent's capabilities, the host mounts, RBAC covering every API
//! call the agent makes, NODE_NAME from the downward API and a configuration file the agent
//! accepts. The systemd unit is checked with `systemd-analyze verify` when it is available.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Drops what a typed object cannot hold anyway and is not a field: nothing but nulls here.
fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, strip_nulls(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(strip_nulls).collect()),
        v => v,
    }
}

/// Parses `raw` as a `T` and checks that serializing it back gives the same document.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(raw: &Value, origin: &str) -> T {
    let obj: T = serde_json::from_value(raw.clone()).unwrap_or_else(|e| panic!("{origin}: {e}"));
    let back = serde_json::to_value(&obj).unwrap();
    let raw = strip_nulls(raw.clone());
    if back != raw {
        panic!(
            "{origin}: fields lost in a round trip through the typed object (misspelled or unknown?)\nwritten: {raw:#}\ntyped:   {back:#}"
        );
    }
    obj
}

#[derive(Default)]
struct Objects {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    config_maps: Vec<ConfigMap>,
    daemon_sets: Vec<DaemonSet>,
}

fn parse_documents(text: &str, origin: &str, into: &mut Objects) {
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value: Value =
            serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{origin} document {i}: {e}"));
        if value.is_null() {
            continue;
        }
        let origin = format!("{origin} document {i}");
        match value["kind"].as_str() {
            Some("Namespace") => into.namespaces.push(typed(&value, &origin)),
            Some("ServiceAccount") => into.service_accounts.push(typed(&value, &origin)),
            Some("ClusterRole") => into.roles.push(typed(&value, &origin)),
            Some("ClusterRoleBinding") => into.bindings.push(typed(&value, &origin)),
            Some("ConfigMap") => into.config_maps.push(typed(&value, &origin)),
            Some("DaemonSet") => into.daemon_sets.push(typed(&value, &origin)),
            other => panic!("{origin}: unexpected kind {other:?}"),
        }
    }
}

/// The semantic checks shared by the plain manifests and the rendered chart.
fn check(objects: &Objects, origin: &str, propagation_on: bool) {
    assert_eq!(objects.daemon_sets.len(), 1, "{origin}: one DaemonSet");
    let ds = &objects.daemon_sets[0];
    let ns = ds.metadata.namespace.clone().expect("DaemonSet namespace");
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.host_pid, Some(true), "{origin}: hostPID");
    assert_eq!(pod.containers.len(), 1);
    let c = &pod.containers[0];
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_ne!(sc.privileged, Some(true), "{origin}: must not be privileged");
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]), "{origin}: drops every capability first");
    let mut added: Vec<&str> = caps.add.as_ref().expect("capabilities.add").iter().map(String::as_str).collect();
    let mut wanted = tracer_user::kernel::caps::deployment_capabilities(propagation_on);
    added.sort_unstable();
    wanted.sort_unstable();
    assert_eq!(added, wanted, "{origin}: the agent's capabilities, no more, no less");

    // Host paths the agent uses, mounted where it looks for them.
    let mounts: Vec<(&str, &str)> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| {
            let vol = pod
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == m.name)
                .unwrap_or_else(|| panic!("{origin}: volume {}", m.name));
            (m.mount_path.as_str(), vol.host_path.as_ref().map_or("", |h| h.path.as_str()))
        })
        .collect();
    for path in ["/sys/kernel/tracing", "/sys/kernel/debug", "/sys/fs/bpf", "/sys/fs/cgroup"] {
        assert!(mounts.contains(&(path, path)), "{origin}: host {path} mounted at {path}: {mounts:?}");
    }

    // NODE_NAME from the downward API; the configuration file from the ConfigMap.
    let env = c.env.as_ref().expect("env");
    let node = env.iter().find(|e| e.name == "NODE_NAME").expect("NODE_NAME");
    let field = node.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).expect("NODE_NAME fieldRef");
    assert_eq!(field.field_path, "spec.nodeName");
    let config_path =
        env.iter().find(|e| e.name == "TRACER_CONFIG").and_then(|e| e.value.clone()).expect("TRACER_CONFIG");
    let config_vol = pod.volumes.iter().flatten().find(|v| v.config_map.is_some()).expect("config volume");
    let cm_name = config_vol.config_map.as_ref().unwrap().name.clone();
    let mount = c.volume_mounts.iter().flatten().find(|m| m.name == config_vol.name).expect("config mount");
    let key =
        config_path.strip_prefix(&format!("{}/", mount.mount_path)).expect("TRACER_CONFIG inside the config mount");
    let cm =
        objects.config_maps.iter().find(|m| m.metadata.name.as_deref() == Some(cm_name.as_str())).expect("ConfigMap");
    let text = cm.data.as_ref().and_then(|d| d.get(key)).unwrap_or_else(|| panic!("{origin}: ConfigMap key {key}"));
    let settings = tracer_user::config::resolve(&Default::default(), |_| None, Some(("configmap", text)))
        .unwrap_or_else(|e| panic!("{origin}: the agent rejects its ConfigMap: {e}"));
    assert_eq!(
        settings.propagation == tracer_user::cli::Propagation::On,
        propagation_on,
        "{origin}: capabilities follow propagation"
    );
    assert!(settings.selectors.exclude_namespaces.contains(&"kube-system".to_string()));
    assert!(settings.selectors.exclude_namespaces.contains(&ns), "{origin}: the agent's own namespace is excluded");
    assert_eq!(settings.kubernetes, tracer_user::cli::KubernetesMode::On);

    // RBAC: the pod's ServiceAccount is bound to a ClusterRole covering every API call.
    let sa = pod.service_account_name.clone().expect("serviceAccountName");
    assert!(objects.service_accounts.iter().any(
        |s| s.metadata.name.as_deref() == Some(sa.as_str()) && s.metadata.namespace.as_deref() == Some(ns.as_str())
    ));
    let binding = objects
        .bindings
        .iter()
        .find(|b| {
            b.subjects
                .iter()
                .flatten()
                .any(|s| s.kind == "ServiceAccount" && s.name == sa && s.namespace.as_deref() == Some(ns.as_str()))
        })
        .unwrap_or_else(|| panic!("{origin}: no binding for {ns}/{sa}"));
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    let role = objects
        .roles
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(binding.role_ref.name.as_str()))
        .expect("bound ClusterRole");
    for (group, resource, verbs) in tracer_user::process::k8s::API_ACCESS {
        for verb in *verbs {
            let allowed = role.rules.iter().flatten().any(|r| {
                r.api_groups.iter().flatten().any(|g| g == group)
                    && r.resources.iter().flatten().any(|x| x == resource)
                    && r.verbs.iter().any(|v| v == verb)
            });
            assert!(allowed, "{origin}: ClusterRole lacks {verb} on {group}/{resource}");
        }
    }
    // Read-only: no verb that changes anything.
    for r in role.rules.iter().flatten() {
        for v in &r.verbs {
            assert!(["get", "list", "watch"].contains(&v.as_str()), "{origin}: ClusterRole grants {v}");
        }
    }
}

#[test]
fn kubernetes_manifests() {
    let dir = repo().join("deploy/kubernetes");
    let kustomization: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap()).unwrap();
    let mut listed: Vec<String> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    listed.sort();
    present.sort();
    assert_eq!(listed, present, "kustomization.yaml lists every manifest");
    let mut objects = Objects::default();
    for name in &present {
        parse_documents(&std::fs::read_to_string(dir.join(name)).unwrap(), name, &mut objects);
    }
    assert_eq!(objects.namespaces.len(), 1);
    check(&objects, "deploy/kubernetes", false);
}

#[test]
fn a_misspelled_field_is_caught() {
    // The round trip is what catches it: serde ignores unknown fields when deserializing.
    let text = std::fs::read_to_string(repo().join("deploy/kubernetes/daemonset.yaml"))
        .unwrap()
        .replace("hostPID:", "hostPid:");
    let r = std::panic::catch_unwind(|| parse_documents(&text, "daemonset", &mut Objects::default()));
    assert!(r.is_err());
}

fn helm_template(extra: &[&str]) -> String {
    let helm = which_helm().expect("helm is not installed: run scripts/setup.sh --tests (the chart test needs it)");
    let out = Command::new(helm)
        .args(["template", "tracer", "deploy/helm/tracer", "--namespace", "observability"])
        .args(extra)
        .current_dir(repo())
        .output()
        .expect("running helm");
    assert!(out.status.success(), "helm template failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn which_helm() -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join("helm")).find(|p| p.is_file())
}

#[test]
fn helm_chart_renders_the_same_deployment() {
    let helm = which_helm().expect("helm is not installed: run scripts/setup.sh --tests (the chart test needs it)");
    let lint =
        Command::new(helm).args(["lint", "--strict", "deploy/helm/tracer"]).current_dir(repo()).output().unwrap();
    assert!(lint.status.success(), "helm lint: {}", String::from_utf8_lossy(&lint.stdout));
    let mut objects = Objects::default();
    parse_documents(&helm_template(&[]), "helm template", &mut objects);
    check(&objects, "helm chart", false);
    // Propagation on adds NET_ADMIN, and only then.
    let mut objects = Objects::default();
    parse_documents(
        &helm_template(&["--set", "config.propagation=on"]),
        "helm template (propagation on)",
        &mut objects,
    );
    check(&objects, "helm chart, propagation on", true);
}

#[test]
fn systemd_unit() {
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/tracer.service")).unwrap();
    // The unit grants exactly the agent's capabilities (NET_ADMIN included: the file may turn
    // propagation on).
    let line = |key: &str| -> Vec<String> {
        let l = unit.lines().find(|l| l.starts_with(&format!("{key}="))).unwrap_or_else(|| panic!("{key}"));
        let mut v: Vec<String> =
            l[key.len() + 1..].split_whitespace().map(|c| c.trim_start_matches("CAP_").to_owned()).collect();
        v.sort();
        v
    };
    let mut wanted: Vec<String> =
        tracer_user::kernel::caps::deployment_capabilities(true).into_iter().map(str::to_owned).collect();
    wanted.sort();
    assert_eq!(line("CapabilityBoundingSet"), wanted);
    assert_eq!(line("AmbientCapabilities"), wanted);
    // Hardening that would break the agent is absent.
    for forbidden in [
        "ProtectKernelTunables=yes",
        "ProtectProc=invisible",
        "ProcSubset=pid",
        "PrivateNetwork=yes",
        "PrivateUsers=yes",
    ] {
        assert!(!unit.lines().any(|l| l.trim() == forbidden), "{forbidden}");
    }
    // The example configuration is one the agent accepts.
    let cfg = std::fs::read_to_string(repo().join("deploy/systemd/tracer.yaml")).unwrap();
    tracer_user::config::resolve(&Default::default(), |_| None, Some(("tracer.yaml", &cfg))).unwrap();

    // systemd's own verifier, when this machine has it (the ExecStart binary must exist for it:
    // verify a copy that starts this test binary instead).
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("systemd-analyze is not installed; skipping its verification");
        return;
    }
    let dir = tracer_tests::harness::TempDir::new("unit");
    let copy = dir.0.join("tracer.service");
    let exe = std::env::current_exe().unwrap();
    let verify = |text: &str| {
        std::fs::write(&copy, text.replace("/usr/local/bin/tracer", exe.to_str().unwrap())).unwrap();
        let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&copy).output().unwrap();
        // Without systemd as PID 1 the verifier cannot load every unit this one names; only
        // problems of this unit's own file count.
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| l.contains("tracer.service"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let problems = verify(&unit);
    // The verifier does report a broken directive here (so silence above means something).
    let broken = verify(&unit.replace("ProtectClock=yes", "ProtectClok=yes"));
    assert!(problems.is_empty(), "systemd-analyze verify: {problems:?}");
    assert!(broken.iter().any(|l| l.contains("ProtectClok")), "{broken:?}");
}

#[test]
fn container_image_builds_with_the_pinned_toolchains() {
    let setup = std::fs::read_to_string(repo().join("scripts/setup.sh")).unwrap();
    let file = std::fs::read_to_string(repo().join("deploy/container/Containerfile")).unwrap();
    for name in ["STABLE", "NIGHTLY", "BPF_LINKER_VERSION"] {
        let pinned = setup
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("setup.sh {name}"));
        let arg = file
            .lines()
            .find_map(|l| l.strip_prefix(&format!("ARG {name}=")))
            .unwrap_or_else(|| panic!("Containerfile ARG {name}"));
        assert_eq!(arg, pinned, "{name}");
    }
    let toolchain = std::fs::read_to_string(repo().join("rust-toolchain.toml")).unwrap();
    let stable = file.lines().find_map(|l| l.strip_prefix("ARG STABLE=")).unwrap();
    assert!(toolchain.contains(&format!("channel = \"{stable}\"")));
    // Multi-stage: the final image holds the binary, not the toolchains.
    assert_eq!(file.lines().filter(|l| l.starts_with("FROM ")).count(), 2);
    // The shipped build: release with cross-crate LTO (Cargo.toml `[profile.dist]`).
    assert!(file.contains("--profile dist"));
    assert!(file.contains("COPY --from=build /src/target/dist/tracer"));
}
