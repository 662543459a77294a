//! Server signing keys: ours as published at `/_matrix/key/v2/server`, and other servers', fetched and cached (server-server API, "Retrieving server keys").
