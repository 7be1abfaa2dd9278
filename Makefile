# Installs jetpack's service files the way a FreeBSD port stages them:
#   make install [PREFIX=/usr/local] [DESTDIR=/stage]
# places $(PREFIX)/etc/rc.d/jetpack (mode 555) and $(PREFIX)/etc/jetpack.conf.sample
# (mode 644); pkg-plist lists them for a port. The Python package itself installs with
# `pip install .` (a port: USES=python, USE_PYTHON=autoplist pep517). Only POSIX make
# syntax here, so BSD make (FreeBSD's make, Debian's bmake) and GNU make both read it.

PREFIX?=	/usr/local
DESTDIR?=
INSTALL?=	install
BUILDDIR?=	build/service

RC_DIR=		$(DESTDIR)$(PREFIX)/etc/rc.d
ETC_DIR=	$(DESTDIR)$(PREFIX)/etc

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

uninstall:
	rm -f $(RC_DIR)/jetpack $(ETC_DIR)/jetpack.conf.sample

clean:
	rm -rf $(BUILDDIR)

.PHONY: all install uninstall clean
