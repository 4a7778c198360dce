//! Policy YAML for tests: a small `Service` builder, and joining documents.
//! TrafficPolicies are short enough to write inline with `format!`.
use std::fmt::Write as _;

/// `kind: Service` being built.
#[derive(Clone, Debug)]
pub struct ServiceDoc {
    name: String,
    protocol: String,
    port: u16,
    addresses: Vec<String>,
    endpoints: Vec<(String, Vec<(String, String)>)>,
}

/// A Service named `name` (protocol http, port 8080 until changed).
pub fn service(name: &str) -> ServiceDoc {
    ServiceDoc { name: name.into(), protocol: "http".into(), port: 8080, addresses: Vec::new(), endpoints: Vec::new() }
}

impl ServiceDoc {
    /// `http`, `http2`, `grpc` or `tcp`.
    pub fn protocol(mut self, p: &str) -> Self {
        self.protocol = p.into();
        self
    }

    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// A virtual IP.
    pub fn address(mut self, ip: &str) -> Self {
        self.addresses.push(ip.into());
        self
    }

    /// An endpoint `IP:port` without labels.
    pub fn endpoint(self, addr: impl ToString) -> Self {
        self.endpoint_labeled(addr, &[])
    }

    /// An endpoint with labels.
    pub fn endpoint_labeled(mut self, addr: impl ToString, labels: &[(&str, &str)]) -> Self {
        self.endpoints.push((addr.to_string(), labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()));
        self
    }

    pub fn yaml(&self) -> String {
        let mut s = format!(
            "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: {}}}\nspec:\n  protocol: {}\n  port: {}\n",
            self.name, self.protocol, self.port
        );
        if !self.addresses.is_empty() {
            let list: Vec<String> = self.addresses.iter().map(|a| format!("\"{a}\"")).collect();
            let _ = writeln!(s, "  addresses: [{}]", list.join(", "));
        }
        if !self.endpoints.is_empty() {
            s.push_str("  endpoints:\n");
            for (addr, labels) in &self.endpoints {
                let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                let _ = writeln!(s, "    - {{address: \"{addr}\", labels: {{{}}}}}", labels.join(", "));
            }
        }
        s
    }
}

/// Join YAML documents into one file.
pub fn docs<S: AsRef<str>>(docs: &[S]) -> String {
    docs.iter().map(|d| d.as_ref().trim_end().to_string()).collect::<Vec<_>>().join("\n---\n") + "\n"
}

/// The cluster name the translation gives a service (`outbound|PORT||NAME`).
pub fn cluster_name(name: &str, port: u16) -> String {
    format!("outbound|{port}||{name}")
}
