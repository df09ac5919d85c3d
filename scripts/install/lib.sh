# Shared helpers for scripts/install/*.sh (sourced).
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
have() { command -v "$1" >/dev/null 2>&1; }
_apt_updated=""
apt_install() {
  if [ -z "$_apt_updated" ]; then
    $SUDO apt-get update -qq
    _apt_updated=1
  fi
  echo "installing $* (Debian packages)"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}
