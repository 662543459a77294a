//! Finding other servers (server-server API, "Resolving server names").
