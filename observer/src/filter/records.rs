//! The pipeline's records and alerts as a filter sees them ([`Fields`]), oriented like their
//! lines: the source is the originator, the destination the responder.

use super::{Dataset, End, Fields, Filter, Key, States};
use crate::{
    detect::Alert,
    tls::{TlsRecord, TlsRole},
    track::record::{self, ConnRecord, Output, Role, StateRecord, ends_of},
};

/// Every key but `dataset`: the observer's own lines have nothing else.
const OWN_IGNORES: [Key; 15] = [
    Key::Port,
    Key::Sport,
    Key::Dport,
    Key::Pid,
    Key::Comm,
    Key::State,
    Key::Addr,
    Key::Cgroup,
    Key::Container,
    Key::Sni,
    Key::Role,
    Key::Netns,
    Key::ConnState,
    Key::Rule,
    Key::Word,
];

impl Dataset {
    /// The dataset of a record's line.
    #[must_use]
    pub fn of(output: &Output) -> Self {
        match output {
            Output::Connection(_) => Dataset::Connection,
            Output::State(_) => Dataset::State,
            Output::Loss(_) => Dataset::Loss,
            Output::Tls(_) => Dataset::Tls,
        }
    }
}

impl Filter {
    /// A record of the pipeline; loss records are the observer's own ([`Filter::admits_own`]).
    #[must_use]
    pub fn admits_output(&self, output: &Output) -> bool {
        if self.is_empty() {
            return true;
        }
        match output {
            Output::Connection(c) => self.admits(&connection(c)),
            Output::State(s) => self.admits(&state(s)),
            Output::Tls(t) => self.admits(&tls(t)),
            Output::Loss(_) => self.admits_own(Dataset::Loss),
        }
    }

    /// An anomaly alert: its subject (process, destination, netns), rule and status.
    #[must_use]
    pub fn admits_alert(&self, a: &Alert) -> bool {
        self.is_empty() || self.admits(&alert(a))
    }
}

pub(super) fn own(dataset: Dataset) -> Fields<'static> {
    Fields {
        dataset: Some(dataset),
        ignore: &OWN_IGNORES,
        ..Fields::default()
    }
}

fn end(e: &record::End) -> End {
    End {
        ip: e.ip,
        port: Some(e.port),
    }
}

fn connection(c: &ConnRecord) -> Fields<'_> {
    let cgroup = c.cgroup.as_ref();
    Fields {
        dataset: Some(Dataset::Connection),
        source: Some(end(&c.source)),
        destination: Some(end(&c.destination)),
        pid: c.process.map(|p| p.pid),
        comm: c.process.as_ref().map(record::Process::name),
        states: States::Life(&c.lifecycle, c.pre_existing),
        sni: c.tls.as_ref().and_then(|t| t.server_name.as_deref()),
        role: Some(c.role.as_str()),
        netns: Some(c.netns),
        conn_state: Some(c.conn_state),
        rule: None,
        cgroup: cgroup.map(|g| &*g.path),
        container: cgroup.and_then(|g| g.container_id.as_deref()),
        ignore: &[],
    }
}

fn state(s: &StateRecord) -> Fields<'_> {
    let (source, destination) = if s.role == Role::Server {
        (s.remote, s.local)
    } else {
        (s.local, s.remote)
    };
    let end = |(ip, port)| End {
        ip,
        port: Some(port),
    };
    Fields {
        dataset: Some(Dataset::State),
        source: Some(end(source)),
        destination: Some(end(destination)),
        states: States::One(crate::track::lifecycle::state_name(s.new_state)),
        role: Some(s.role.as_str()),
        netns: Some(s.netns),
        ..Fields::default()
    }
}

fn tls(t: &TlsRecord) -> Fields<'_> {
    let end = |(ip, port)| End {
        ip,
        port: Some(port),
    };
    let (source, destination) = match t.tuple.as_ref().map(ends_of) {
        Some((local, remote)) if t.facts.role == Some(TlsRole::Server) => {
            (Some(end(remote)), Some(end(local)))
        }
        Some((local, remote)) => (Some(end(local)), Some(end(remote))),
        None => (None, None),
    };
    Fields {
        dataset: Some(Dataset::Tls),
        source,
        destination,
        pid: t.process.map(|p| p.pid),
        comm: t.process.as_ref().map(crate::tls::TlsProcess::name),
        sni: t.facts.server_name.as_deref(),
        role: t.facts.role.map(TlsRole::as_str),
        netns: Some(t.netns),
        ..Fields::default()
    }
}

fn alert(a: &Alert) -> Fields<'_> {
    let s = &a.subject;
    Fields {
        dataset: Some(Dataset::Anomaly),
        destination: s.destination.map(|(ip, port)| End {
            ip,
            port: (port != 0).then_some(port),
        }),
        pid: s.process.map(|p| p.pid),
        comm: s.process.as_ref().map(record::Process::name),
        states: States::One(a.status.as_str()),
        netns: s.netns,
        rule: Some(a.rule),
        ..Fields::default()
    }
}
