//! The request histograms and their label sets, after OpenTelemetry's conventions: HTTP
//! requests in `http.server.request.duration` / `http.client.request.duration`, RPC calls in
//! `rpc.server.duration` / `rpc.client.duration`, database calls in
//! `db.client.operation.duration`, messages sent and received in
//! `messaging.client.operation.duration`; seconds, with the HTTP conventions' advisory
//! buckets. Labels are bounded: never a path, a query or a payload.

use crate::model::{ProcessResource, SpanKind};
use crate::protocols::shape::{MetricLabels, MetricPoint};

/// The advisory bucket boundaries of OpenTelemetry's HTTP duration histograms, in seconds.
pub const DURATION_BUCKETS: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];

/// Label set of one series: only the labels that are known, in a fixed order.
pub type Labels = Vec<(&'static str, String)>;

/// The request histograms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    HttpServer,
    HttpClient,
    RpcServer,
    RpcClient,
    DbClient,
    MessagingClient,
}

impl Family {
    pub const ALL: [Family; 6] =
        [Self::HttpServer, Self::HttpClient, Self::RpcServer, Self::RpcClient, Self::DbClient, Self::MessagingClient];

    /// The instrument's OpenTelemetry name.
    pub fn otel_name(self) -> &'static str {
        match self {
            Self::HttpServer => "http.server.request.duration",
            Self::HttpClient => "http.client.request.duration",
            Self::RpcServer => "rpc.server.duration",
            Self::RpcClient => "rpc.client.duration",
            Self::DbClient => "db.client.operation.duration",
            Self::MessagingClient => "messaging.client.operation.duration",
        }
    }

    /// The metric's name on the Prometheus endpoint (the `_seconds` unit suffix is added there).
    pub fn prometheus_name(self) -> &'static str {
        match self {
            Self::HttpServer => "http_server_request_duration",
            Self::HttpClient => "http_client_request_duration",
            Self::RpcServer => "rpc_server_duration",
            Self::RpcClient => "rpc_client_duration",
            Self::DbClient => "db_client_operation_duration",
            Self::MessagingClient => "messaging_client_operation_duration",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Self::HttpServer => "Duration of HTTP server requests (http.server.request.duration)",
            Self::HttpClient => "Duration of HTTP client requests (http.client.request.duration)",
            Self::RpcServer => "Duration of RPC calls served (rpc.server.duration)",
            Self::RpcClient => "Duration of RPC calls made (rpc.client.duration)",
            Self::DbClient => "Duration of database calls made (db.client.operation.duration)",
            Self::MessagingClient => "Duration of messages sent and received (messaging.client.operation.duration)",
        }
    }
}

/// The histogram and the labels of one request.
pub fn labels(resource: &ProcessResource, p: &MetricPoint) -> (Family, Labels) {
    let mut labels: Labels = vec![("service_name", resource.service_name.clone())];
    let client = p.kind != SpanKind::Server;
    let server_labels = |labels: &mut Labels| {
        if client {
            if let Some(a) = &p.server.0 {
                labels.push(("server_address", a.clone()));
            }
            if let Some(port) = p.server.1 {
                labels.push(("server_port", port.to_string()));
            }
        }
    };
    let family = match &p.labels {
        MetricLabels::Http { method, status, error_type } => {
            labels.push(("http_request_method", method.clone()));
            if let Some(code) = status {
                labels.push(("http_response_status_code", code.to_string()));
            }
            server_labels(&mut labels);
            if let Some(e) = error_type {
                labels.push(("error_type", e.clone()));
            }
            if client { Family::HttpClient } else { Family::HttpServer }
        }
        MetricLabels::Rpc { system, service, method, grpc_status, error_type } => {
            labels.push(("rpc_system", (*system).to_owned()));
            if let Some(s) = service {
                labels.push(("rpc_service", s.clone()));
            }
            if let Some(m) = method {
                labels.push(("rpc_method", m.clone()));
            }
            if let Some(code) = grpc_status {
                labels.push(("rpc_grpc_status_code", code.to_string()));
            }
            server_labels(&mut labels);
            if let Some(e) = error_type {
                labels.push(("error_type", e.clone()));
            }
            if client { Family::RpcClient } else { Family::RpcServer }
        }
        MetricLabels::Db { system, operation, error_type } => {
            labels.push(("db_system_name", (*system).to_owned()));
            if let Some(op) = operation {
                labels.push(("db_operation_name", op.clone()));
            }
            server_labels(&mut labels);
            if let Some(e) = error_type {
                labels.push(("error_type", e.clone()));
            }
            Family::DbClient
        }
        MetricLabels::Messaging { system, operation, operation_type, error_type } => {
            labels.push(("messaging_system", (*system).to_owned()));
            labels.push(("messaging_operation_name", (*operation).to_owned()));
            labels.push(("messaging_operation_type", (*operation_type).to_owned()));
            server_labels(&mut labels);
            if let Some(e) = error_type {
                labels.push(("error_type", e.clone()));
            }
            Family::MessagingClient
        }
    };
    (family, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(name: &str) -> ProcessResource {
        ProcessResource { pid: 7, service_name: name.into(), attributes: vec![] }
    }

    fn http(kind: SpanKind, method: &str, status: Option<u16>, error_type: Option<&str>) -> MetricPoint {
        MetricPoint {
            pid: 7,
            kind,
            duration_s: 0.003,
            server: (Some("10.0.0.2".into()), Some(8080)),
            labels: MetricLabels::Http { method: method.into(), status, error_type: error_type.map(Into::into) },
        }
    }

    #[test]
    fn labels_follow_the_conventions_and_never_carry_the_path() {
        let (f, l) = labels(&resource("api"), &http(SpanKind::Server, "GET", Some(200), None));
        assert_eq!(f, Family::HttpServer);
        assert_eq!(
            l,
            vec![
                ("service_name", "api".to_string()),
                ("http_request_method", "GET".to_string()),
                ("http_response_status_code", "200".to_string()),
            ]
        );
        let (_, l) = labels(&resource("api"), &http(SpanKind::Server, "_OTHER", Some(503), Some("503")));
        assert!(l.contains(&("http_request_method", "_OTHER".into())), "{l:?}");
        assert!(l.contains(&("error_type", "503".into())), "{l:?}");
        let (f, l) = labels(&resource("web"), &http(SpanKind::Client, "POST", Some(404), Some("404")));
        assert_eq!(f, Family::HttpClient);
        assert!(l.contains(&("error_type", "404".into())) && l.contains(&("server_port", "8080".into())), "{l:?}");
        let (_, l) = labels(&resource("web"), &http(SpanKind::Client, "POST", None, Some("_OTHER")));
        assert!(
            l.contains(&("error_type", "_OTHER".into())) && !l.iter().any(|(k, _)| *k == "http_response_status_code"),
            "{l:?}"
        );
    }

    #[test]
    fn rpc_calls_go_to_the_rpc_histograms() {
        let p = MetricPoint {
            pid: 7,
            kind: SpanKind::Client,
            duration_s: 0.001,
            server: (Some("127.0.0.1".into()), Some(50051)),
            labels: MetricLabels::Rpc {
                system: "grpc",
                service: Some("pkg.Svc".into()),
                method: Some("Get".into()),
                grpc_status: Some(5),
                error_type: Some("NOT_FOUND".into()),
            },
        };
        let (f, l) = labels(&resource("web"), &p);
        assert_eq!(f, Family::RpcClient);
        assert_eq!(
            l,
            vec![
                ("service_name", "web".to_string()),
                ("rpc_system", "grpc".to_string()),
                ("rpc_service", "pkg.Svc".to_string()),
                ("rpc_method", "Get".to_string()),
                ("rpc_grpc_status_code", "5".to_string()),
                ("server_address", "127.0.0.1".to_string()),
                ("server_port", "50051".to_string()),
                ("error_type", "NOT_FOUND".to_string()),
            ]
        );
    }

    #[test]
    fn messages_go_to_the_messaging_histogram_never_by_destination() {
        let p = MetricPoint {
            pid: 7,
            kind: SpanKind::Producer,
            duration_s: 0.0001,
            server: (Some("127.0.0.1".into()), Some(4222)),
            labels: MetricLabels::Messaging {
                system: "nats",
                operation: "publish",
                operation_type: "send",
                error_type: None,
            },
        };
        let (f, l) = labels(&resource("web"), &p);
        assert_eq!(f, Family::MessagingClient);
        assert_eq!(f.otel_name(), "messaging.client.operation.duration");
        assert_eq!(
            l,
            vec![
                ("service_name", "web".to_string()),
                ("messaging_system", "nats".to_string()),
                ("messaging_operation_name", "publish".to_string()),
                ("messaging_operation_type", "send".to_string()),
                ("server_address", "127.0.0.1".to_string()),
                ("server_port", "4222".to_string()),
            ]
        );
    }
}
