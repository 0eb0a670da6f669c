//! LLM inferencing (`fermyon:spin/llm@2.0.0`), which wasmcell links but runs no models for;
//! and how a service's URL address (MySQL's, MQTT's) is checked against the component's
//! grants (PostgreSQL's addresses are checked in `postgres`).
//!
//! Spin links every interface of its platform for every app and fails only a call, so an app
//! whose SDK imports them all (Spin's Python SDK does, whatever the app calls) starts. Each
//! call answers with the interface's own error: an inferencing call, that no model runs here;
//! an address the component's `allowed_outbound_hosts` does not grant, as Spin answers it
//! (`connection-failed`, "... is not permitted"), with the entry to add on the container's
//! stderr (the entry only: an address's password stays out of the log).

use super::fermyon::spin2_0_0::llm;
use super::{SpinHost, SpinState};
use crate::host::Outcome;
use wasmcell_runtime::outbound::has_valid_port;
use wasmcell_workload::Network;

/// A service the component reaches at an address: its name for messages, the scheme its
/// `allowed_outbound_hosts` entries use, and its default port.
#[derive(Clone, Copy)]
pub(super) struct Service {
    name: &'static str,
    scheme: &'static str,
    port: u16,
}

pub(super) const MYSQL: Service = Service {
    name: "MySQL",
    scheme: "mysql",
    port: 3306,
};
pub(super) const MQTT: Service = Service {
    name: "MQTT",
    scheme: "mqtt",
    port: 1883,
};

/// The host and port of a connection address, a URL (`mysql://user:pw@host:3306/db`,
/// `mqtt://host:1883`).
pub(super) fn host_and_port(address: &str, service: Service) -> Option<(String, u16)> {
    let uri: http::Uri = address.parse().ok()?;
    uri.scheme()?;
    let authority = uri.authority().filter(|a| has_valid_port(a))?;
    let host = authority
        .host()
        .trim_matches(['[', ']'])
        .to_ascii_lowercase();
    Some((host, authority.port_u16().unwrap_or(service.port)))
}

/// Whether the component's grants permit a connection to `address`; if not, why, as the guest
/// is told (its address as it gave it, as Spin says it), also said on the container's stderr
/// with the entry to add, as for HTTP.
pub(super) fn permitted(host: &SpinHost, address: &str, service: Service) -> Result<(), String> {
    let Some((name, port)) = host_and_port(address, service) else {
        return Err(format!("invalid {} address {address:?}", service.name));
    };
    let scheme = service.scheme;
    if !host.allowed_hosts.allows(scheme, &name, port) {
        let entry = format!("{scheme}://{name}:{port}");
        host.report_denied(&entry, &entry);
        return Err(format!("address {address} is not permitted"));
    }
    Ok(())
}

/// Why the component of `state` may not reach any server: its workload has no network
/// (`wasmcell run` without `--net`), as for its HTTP requests.
pub(super) fn no_network(state: &SpinState) -> Option<String> {
    (state.hooks.network() == Network::None).then(|| {
        "the workload has no network: outbound connections need one (wasmcell run --net)".to_owned()
    })
}

/// What an inferencing call answers: a model the component's `ai_models` does not name is
/// invalid input, as in Spin; any other, that no backend runs models here (Spin's answer
/// where it has no LLM engine).
fn no_model(state: &SpinState, model: &str) -> llm::Error {
    if !state.host.ai_models.iter().any(|m| m == model) {
        return llm::Error::InvalidInput(format!(
            "model {model:?} is not allowed: add it to ai_models in [component.{}] of spin.toml",
            state.host.id
        ));
    }
    llm::Error::RuntimeError(
        "this wasmcell runs no LLM models: LLM operations are not supported".to_owned(),
    )
}

impl llm::Host for SpinState {
    async fn infer(
        &mut self,
        model: String,
        _prompt: String,
        _params: Option<llm::InferencingParams>,
    ) -> Outcome<llm::InferencingResult, llm::Error> {
        Ok(Err(no_model(self, &model)))
    }

    async fn generate_embeddings(
        &mut self,
        model: String,
        _text: Vec<String>,
    ) -> Outcome<llm::EmbeddingsResult, llm::Error> {
        Ok(Err(no_model(self, &model)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fermyon::spin2_0_0::rdbms_types as rdbms;
    use crate::host::tests::{spin_host, spin_state};

    /// Without the network grant, no database or broker is reached, as no HTTP request is.
    #[tokio::test]
    async fn without_a_network_no_server_is_reached() {
        use crate::host::fermyon::spin2_0_0::{mysql, redis};
        let dir = tempfile::tempdir().unwrap();
        let granted = ["mysql://db.example:3306", "redis://db.example:6379"];
        let host = spin_host(dir.path(), &granted, &[], &[], &Default::default());
        let mut state = spin_state(host);
        state.hooks = wasmcell_runtime::outbound::HttpHooks::new(Network::None);
        let address = "mysql://u@db.example/x".to_owned();
        let opened = mysql::HostConnection::open(&mut state, address)
            .await
            .unwrap();
        assert!(
            matches!(opened, Err(rdbms::Error::ConnectionFailed(why)) if why.contains("no network"))
        );
        let address = "redis://db.example".to_owned();
        let opened = redis::HostConnection::open(&mut state, address)
            .await
            .unwrap();
        assert!(matches!(opened, Err(redis::Error::Other(why)) if why.contains("no network")));
    }

    #[test]
    fn llm_answers_invalid_input_for_a_model_not_granted_and_a_runtime_error_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let host = spin_host(dir.path(), &[], &[], &[], &Default::default());
        let state = spin_state(host);
        assert!(
            matches!(no_model(&state, "gpt"), llm::Error::InvalidInput(why) if why.contains("ai_models"))
        );
        assert!(matches!(
            no_model(&state, "llama2-chat"),
            llm::Error::RuntimeError(_)
        ));
    }

    #[test]
    fn addresses_name_their_host_and_port() {
        for (address, service, expected) in [
            (
                "mysql://u:p@DB.example:6543/app",
                MYSQL,
                ("db.example", 6543),
            ),
            ("mysql://root:pw@127.0.0.1/spin", MYSQL, ("127.0.0.1", 3306)),
            ("mqtt://[::1]:1884", MQTT, ("::1", 1884)),
        ] {
            let (host, port) = host_and_port(address, service).expect(address);
            assert_eq!((host.as_str(), port), expected, "{address}");
        }
        for address in ["host=db user=u", "mysql://", "mysql://db:99999/app"] {
            assert_eq!(host_and_port(address, MYSQL), None, "{address}");
        }
    }
}
