#!/usr/bin/env bash
# Writes a small PKI for the TLS tests into DIR with the openssl CLI (all keys EC P-256):
#   ca.pem                 the CA everything below is signed by (ca.key)
#   server.pem/.key        server certificate, subjectAltName IP:127.0.0.1 and DNS:localhost
#   client.pem/.key        client certificate (extendedKeyUsage clientAuth)
#   server-expired.pem/.key, client-expired.pem/.key   the same, valid only in 2020
#   other-ca.pem           a CA nobody trusts; other-client.pem/.key signed by it
#   not-pem.pem            a file that is not PEM
# Usage: gen-certs.sh DIR     Exit 77 (skip) when openssl is missing.
set -euo pipefail
dir=$1
command -v openssl > /dev/null || { echo "SKIP: the openssl CLI is missing (apt-get install openssl)"; exit 77; }
mkdir -p "$dir"
cd "$dir"

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2> /dev/null; }
ca() { # NAME CN
  key "$1.key"
  openssl req -x509 -new -key "$1.key" -subj "/CN=$2" -days 30 -out "$1.pem" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
}

ca ca "ferry test CA"
ca other-ca "ferry untrusted CA"

cat > ext.cnf <<'EOT'
[server]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
[client]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
EOT

# `openssl ca` is the CLI's one way to give a certificate fixed (past) validity dates.
mkdir -p ca.db
: > ca.db/index.txt
cat > ca.cnf <<EOT
[ca]
default_ca = test_ca
[test_ca]
dir = .
database = ca.db/index.txt
new_certs_dir = ca.db
serial = ca.db/serial
default_md = sha256
policy = any
unique_subject = no
copy_extensions = none
[any]
commonName = supplied
EOT
echo 1000 > ca.db/serial

# NAME CA EXT [STARTDATE ENDDATE]
leaf() {
  key "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=$1" -out "$1.csr"
  if [ $# -gt 3 ]; then
    openssl ca -batch -config ca.cnf -cert "$2.pem" -keyfile "$2.key" -extfile ext.cnf \
      -extensions "$3" -notext -startdate "$4" -enddate "$5" -in "$1.csr" -out "$1.pem" 2> /dev/null
  else
    openssl ca -batch -config ca.cnf -cert "$2.pem" -keyfile "$2.key" -extfile ext.cnf \
      -extensions "$3" -notext -days 30 -in "$1.csr" -out "$1.pem" 2> /dev/null
  fi
  rm -f "$1.csr"
}

leaf server ca server
leaf client ca client
leaf server-expired ca server 20200101000000Z 20200201000000Z
leaf client-expired ca client 20200101000000Z 20200201000000Z
leaf other-client other-ca client
echo "this is not a certificate" > not-pem.pem
chmod 600 ./*.key
