# Installs jetpack's service files the way a FreeBSD port stages them:
#   make install [PREFIX=/usr/local] [DESTDIR=/stage]
# places $(PREFIX)/etc/rc.d/jetpack (mode 555), $(PREFIX)/etc/jetpack.conf.sample (mode 644)
# and the manual page $(PREFIX)/share/man/man8/jetpack.8 (mode 444); pkg-plist lists them
# for a port. The Python package itself installs with
# `pip install .` (a port: USES=python, USE_PYTHON=autoplist pep517). Only POSIX make
# syntax here, so BSD make (FreeBSD's make, Debian's bmake) and GNU make both read it.

PREFIX?=	/usr/local
DESTDIR?=
INSTALL?=	install
BUILDDIR?=	build/service

RC_DIR=		$(DESTDIR)$(PREFIX)/etc/rc.d
ETC_DIR=	$(DESTDIR)$(PREFIX)/etc
MAN8_DIR=	$(DESTDIR)$(PREFIX)/share/man/man8

all:
	@echo "usage: make install [PREFIX=/usr/local] [DESTDIR=/stage]"

# The script names /usr/local/etc/jetpack.conf and /usr/local/bin/jetpack; another PREFIX
# gets its own paths, as a port's %%PREFIX%% substitution would (redone on every install,
# so a changed PREFIX never picks up a stale copy).
install:
	mkdir -p $(BUILDDIR)
	sed -e 's|/usr/local/|$(PREFIX)/|g' rc.d/jetpack > $(BUILDDIR)/jetpack
	$(INSTALL) -d -m 755 $(RC_DIR)
	$(INSTALL) -m 555 $(BUILDDIR)/jetpack $(RC_DIR)/jetpack
	$(INSTALL) -m 644 conf/jetpack.conf.sample $(ETC_DIR)/jetpack.conf.sample
	$(INSTALL) -d -m 755 $(MAN8_DIR)
	$(INSTALL) -m 444 man/jetpack.8 $(MAN8_DIR)/jetpack.8

uninstall:
	rm -f $(RC_DIR)/jetpack $(ETC_DIR)/jetpack.conf.sample $(MAN8_DIR)/jetpack.8

clean:
	rm -rf $(BUILDDIR)

.PHONY: all install uninstall clean
