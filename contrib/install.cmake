# cmake --install and the .deb (CPack). Included from the top CMakeLists.txt.
#
#   <prefix>/bin/rulesocks
#   <prefix>/share/rulesocks/lua/                      libruleset.lua, ruleset.lua, examples/
#   <prefix>/lib/systemd/system/rulesocks.service      (systemd searches /usr/local/lib too)
#   <prefix>/share/man/man8/rulesocks.8.gz
#   <prefix>/share/bash-completion/completions/rulesocks
#   <prefix>/share/doc/rulesocks/                      README.md, API.md
#
# The package: cmake --build build --target package (or cpack in the build
# dir) writes build/rulesocks_<version>_<arch>.deb, installing to /usr.

install(TARGETS rulesocks RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY lua/ DESTINATION ${CMAKE_INSTALL_DATADIR}/rulesocks/lua)

# The unit names /usr/bin/rulesocks and /usr/share/rulesocks; an install to
# another prefix gets its own paths. Rewritten at install time, when
# CMAKE_INSTALL_PREFIX is the prefix actually installed to (CPack's /usr).
set(RULESOCKS_UNIT_OUT "${CMAKE_CURRENT_BINARY_DIR}/rulesocks.service")
install(CODE "
  file(READ \"${CMAKE_CURRENT_SOURCE_DIR}/contrib/rulesocks.service\" unit)
  string(REPLACE \"/usr/bin/rulesocks\" \"\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_BINDIR}/rulesocks\"
         unit \"\${unit}\")
  string(REPLACE \"/usr/share/rulesocks\" \"\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_DATADIR}/rulesocks\"
         unit \"\${unit}\")
  file(WRITE \"${RULESOCKS_UNIT_OUT}\" \"\${unit}\")
")
# Not CMAKE_INSTALL_LIBDIR: units do not go to the multiarch directory.
install(FILES ${RULESOCKS_UNIT_OUT} DESTINATION lib/systemd/system)

# Debian compresses man pages (gzip -9n: no name or time stamp, reproducible).
set(RULESOCKS_MAN_GZ "${CMAKE_CURRENT_BINARY_DIR}/rulesocks.8.gz")
add_custom_command(
  OUTPUT ${RULESOCKS_MAN_GZ}
  COMMAND gzip -9nc ${CMAKE_CURRENT_SOURCE_DIR}/contrib/rulesocks.8 > ${RULESOCKS_MAN_GZ}
  DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/contrib/rulesocks.8
  COMMENT "Compressing the man page")
add_custom_target(manpage ALL DEPENDS ${RULESOCKS_MAN_GZ})
install(FILES ${RULESOCKS_MAN_GZ} DESTINATION ${CMAKE_INSTALL_MANDIR}/man8)
install(FILES contrib/rulesocks.bash-completion
        DESTINATION ${CMAKE_INSTALL_DATADIR}/bash-completion/completions RENAME rulesocks)
install(FILES README.md API.md DESTINATION ${CMAKE_INSTALL_DOCDIR})

# --- CPack: a Debian package whose dependencies are Debian's library packages
set(RULESOCKS_PACKAGE_MAINTAINER "rulesocks maintainers <maintainers@rulesocks.invalid>"
    CACHE STRING "Maintainer field of the .deb")
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME rulesocks)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "Lua-scriptable SOCKS4/4A/5 and HTTP proxy server")
# CPack puts the summary first and indents these lines; an empty line becomes " .".
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION
    "rulesocks is a SOCKS4, SOCKS4A, SOCKS5 and HTTP CONNECT proxy whose routing is
decided by a Lua 5.4 ruleset: per-request rules, proxy chains, load balancing,
RPC between nodes and hot reload, through a RESTful API. It is compatible with
neosocksd's rulesets and command line.

The package installs a hardened systemd unit (rulesocks.service) that
listens on loopback; it is neither enabled nor started at installation.")
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "${RULESOCKS_PACKAGE_MAINTAINER}")
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
# dpkg-shlibdeps (dpkg-dev) turns the binary's NEEDED libraries into package
# names: libev4, liblua5.4-0, libc-ares2, zlib1g, libfmt9, libpcre2-8-0, libc6...
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "lua5.4")
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    "${CMAKE_CURRENT_SOURCE_DIR}/contrib/debian/postinst;${CMAKE_CURRENT_SOURCE_DIR}/contrib/debian/prerm;${CMAKE_CURRENT_SOURCE_DIR}/contrib/debian/postrm")
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
include(CPack)
