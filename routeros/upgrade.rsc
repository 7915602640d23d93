# tailrouter: upgrade the container when a new image is published (RouterOS 7.x).
#
# What it does, once per run:
#   1. fetches the published digest of the image archive for this router's architecture
#      (`tailrouter-linux-ARCH.tar.sha256`, written by `cargo xtask image` next to the archive:
#      one `sha256sum` line, 64 lowercase hex digits, two spaces, the file name; only the
#      digits are read);
#   2. compares it with the digest the running container was installed from, which this script
#      keeps in the container's comment ("tailrouter <sha256>"): nothing on flash but the
#      router's own configuration;
#   3. only when they differ: downloads the archive to the disk, stops the container, re-adds it
#      from the new file with the same interface, root directory, mounts and environment list,
#      waits for the extraction, starts it and deletes the archive.
# The state directory is a mount, so the node keeps its key and login across the upgrade.
# docs/routeros.md is the whole guide (publishing, install, what is unverified).
#
# Install: /system/script/add name=tailrouter-upgrade source=[/file/get routeros/upgrade.rsc contents]
# Run daily: /system/scheduler/add name=tailrouter-upgrade interval=1d on-event="/system/script/run tailrouter-upgrade"
# First run: give the existing container the comment "tailrouter" (any digest after it is fine):
#   /container/set [find where root-dir~"tailrouter"] comment="tailrouter none"
#
# RouterOS scripting has no hash function, so the archive itself cannot be checked against the
# digest here: the download is trusted through HTTPS with certificate checking (import the CA
# that signs your release server, or use a public one RouterOS trusts).

:local base "https://example.net/tailrouter/latest"
:local arch "arm64"
:local disk "disk1"
:local name "tailrouter"

:local sumUrl ($base . "/" . $name . "-linux-" . $arch . ".tar.sha256")
:local tarUrl ($base . "/" . $name . "-linux-" . $arch . ".tar")
:local tarFile ($disk . "/" . $name . "-upgrade.tar")

:local res [/tool/fetch url=$sumUrl check-certificate=yes output=user as-value]
:local newSum [:pick ($res->"data") 0 64]
# The same text the container's comment holds: sha256sum's lowercase hex, nothing else.
:if (([:len $newSum] != 64) || !($newSum ~ "^[0-9a-f]+\$")) do={
  :log error ("tailrouter upgrade: no sha256 digest at the start of " . $sumUrl)
  :error "no digest"
}
:local ct [/container/find where comment~("^" . $name . " ")]
:if ([:len $ct] != 1) do={
  :log error ("tailrouter upgrade: want exactly one container with the comment '" . $name . " ...'")
  :error "no container"
}
:local want ($name . " " . $newSum)
:if ([/container/get $ct comment] = $want) do={
  :log info ("tailrouter upgrade: up to date (" . $newSum . ")")
} else={
  :log info ("tailrouter upgrade: new image " . $newSum . ", downloading")
  /tool/fetch url=$tarUrl check-certificate=yes dst-path=$tarFile
  :local iface [/container/get $ct interface]
  :local root [/container/get $ct root-dir]
  :local mounts [/container/get $ct mounts]
  :local envs [/container/get $ct envlist]
  /container/stop $ct
  :local n 0
  :while (([/container/get $ct status] != "stopped") && ($n < 60)) do={ :delay 1s; :set n ($n + 1) }
  /container/remove $ct
  /container/add file=$tarFile interface=$iface root-dir=$root mounts=$mounts envlist=$envs \
    start-on-boot=yes logging=yes comment=$want
  :local nct [/container/find where comment=$want]
  :set n 0
  :while (([/container/get $nct status] != "stopped") && ($n < 300)) do={ :delay 2s; :set n ($n + 1) }
  /container/start $nct
  /file/remove $tarFile
  :log info ("tailrouter upgrade: running " . $newSum)
}
