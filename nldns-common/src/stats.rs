//! Datapath counters: indices into the per-CPU `NLDNS_COUNTERS` array map.

/// One counter per outcome of the TC programs and the cgroup socket hooks. Per-CPU so that the hot path needs no
/// atomics (the bpf target has no 64-bit fetch_add); the agent sums the CPUs.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Queries to a Service IP rewritten toward the intercept endpoint (ingress).
    QueriesRedirected = 0,
    /// Replies from the intercept endpoint rewritten back to the Service IP (egress).
    RepliesRewritten = 1,
    /// Packets left untouched because they are not DNS to a Service IP (early exit).
    Passed = 2,
    /// IP fragments, never rewritten.
    FragmentsPassed = 3,
    /// Packets too short or inconsistent to parse; passed as they came.
    ParseErrors = 4,
    /// Queries that would have been redirected, passed because the agent's heartbeat is
    /// stale or the datapath is not configured yet (fail-open).
    FailOpenPasses = 5,
    /// Rewrites the kernel refused (helper error); the packet is passed.
    RewriteErrors = 6,
    /// connect()/sendmsg() of a host-network socket to a Service IP rewritten toward the
    /// intercept endpoint by the cgroup socket hooks.
    SockRedirected = 7,
    /// recvmsg()/getpeername() results rewritten from the intercept endpoint back to the
    /// Service IP by the cgroup socket hooks.
    SockRestored = 8,
    /// connect()/sendmsg() to a Service IP left alone because the agent's heartbeat is
    /// stale (fail-open, socket hooks).
    SockFailOpenPasses = 9,
    /// Queries (and TCP connection openings) that would have been redirected, passed
    /// because no agent socket listens at the intercept endpoint: the agent exited or was
    /// killed, and its heartbeat had not gone stale yet (fail-open, TC).
    AgentGonePasses = 10,
    /// The same for connect()/sendmsg() in the socket hooks.
    SockAgentGonePasses = 11,
    /// connect()/sendmsg() of a pod's socket (a pod network namespace, in the pods'
    /// cgroup) to a Service IP rewritten toward the pod-socket intercept ports.
    PodSockRedirected = 12,
    /// recvmsg()/getpeername() results of pod sockets rewritten back to the Service IP.
    PodSockRestored = 13,
    /// connect()/sendmsg() of a pod's socket to a Service IP left alone because the
    /// agent's heartbeat is stale (fail-open): the dataplane's own programs see the
    /// ClusterIP as if nldns were not installed.
    PodSockFailOpenPasses = 14,
    /// Queries the answering ingress program answered itself from `NLDNS_ANSWERS` and
    /// sent straight back to the pod.
    KernelAnswers = 15,
    /// Queries it passed on to the agent: no entry for the question (a miss, or an answer
    /// the agent keeps to itself).
    KernelPassNoEntry = 16,
    /// ... passed because the query is not one the kernel answers exactly (EDNS options,
    /// opcode, counts, class, compression, name too long, VLAN tag, TCP ...).
    KernelPassQuery = 17,
    /// ... passed because the entry is about to expire or due for a prefetch decision.
    KernelPassExpiring = 18,
    /// ... passed because the answer is larger than the client may receive over UDP.
    KernelPassTooLarge = 19,
    /// Answers a helper refused: before the packet was changed (it could not be grown),
    /// passed to the agent; after, dropped (the client retries). Should stay 0.
    KernelAnswerErrors = 20,
}

impl Counter {
    pub const COUNT: u32 = 21;

    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::QueriesRedirected,
        Counter::RepliesRewritten,
        Counter::Passed,
        Counter::FragmentsPassed,
        Counter::ParseErrors,
        Counter::FailOpenPasses,
        Counter::RewriteErrors,
        Counter::SockRedirected,
        Counter::SockRestored,
        Counter::SockFailOpenPasses,
        Counter::AgentGonePasses,
        Counter::SockAgentGonePasses,
        Counter::PodSockRedirected,
        Counter::PodSockRestored,
        Counter::PodSockFailOpenPasses,
        Counter::KernelAnswers,
        Counter::KernelPassNoEntry,
        Counter::KernelPassQuery,
        Counter::KernelPassExpiring,
        Counter::KernelPassTooLarge,
        Counter::KernelAnswerErrors,
    ];

    /// Stable snake_case name, used by `nldns status` and the Prometheus metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::QueriesRedirected => "queries_redirected",
            Counter::RepliesRewritten => "replies_rewritten",
            Counter::Passed => "passed",
            Counter::FragmentsPassed => "fragments_passed",
            Counter::ParseErrors => "parse_errors",
            Counter::FailOpenPasses => "fail_open_passes",
            Counter::RewriteErrors => "rewrite_errors",
            Counter::SockRedirected => "sock_redirected",
            Counter::SockRestored => "sock_restored",
            Counter::SockFailOpenPasses => "sock_fail_open_passes",
            Counter::AgentGonePasses => "agent_gone_passes",
            Counter::SockAgentGonePasses => "sock_agent_gone_passes",
            Counter::PodSockRedirected => "pod_sock_redirected",
            Counter::PodSockRestored => "pod_sock_restored",
            Counter::PodSockFailOpenPasses => "pod_sock_fail_open_passes",
            Counter::KernelAnswers => "kernel_answers",
            Counter::KernelPassNoEntry => "kernel_pass_no_entry",
            Counter::KernelPassQuery => "kernel_pass_query",
            Counter::KernelPassExpiring => "kernel_pass_expiring",
            Counter::KernelPassTooLarge => "kernel_pass_too_large",
            Counter::KernelAnswerErrors => "kernel_answer_errors",
        }
    }
}
