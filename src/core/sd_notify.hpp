// systemd readiness notification (sd_notify(3)): Type=notify services tell the
// service manager when they are ready, reloading or stopping by sending one
// datagram of "KEY=VALUE\n" lines to the AF_UNIX socket in $NOTIFY_SOCKET.
//
// Written here rather than linked from libsystemd: the protocol is one
// sendto() on a documented, stable interface (systemd's "Notify socket"
// spec invites reimplementation), and libsystemd0 would pull liblzma, libzstd,
// liblz4, libgcrypt and libcap into a network-facing process (the path of
// CVE-2024-3094 into sshd) and a -dev build dependency, for ~40 lines.
#pragma once

#include <string>
#include <string_view>

namespace rs::sd {

// Sends `state` to the notify socket named by `address`: a file system path
// ("/run/systemd/notify") or an abstract name ("@name"). Returns false with a
// message in *err when the address is unusable or the send fails.
bool send_notification(std::string_view address, std::string_view state, std::string* err);

// Sends `state` to $NOTIFY_SOCKET when it is set (a service started by
// systemd with Type=notify) and does nothing otherwise. A failure is logged
// as a warning and otherwise ignored: readiness reporting never stops the
// proxy. Returns whether a notification was sent.
bool notify(std::string_view state);

// "RELOADING=1" with the MONOTONIC_USEC= timestamp that systemd 253+ asks for
// (Type=notify-reload); older managers ignore the extra field.
std::string reloading_state();

}  // namespace rs::sd
