"""An ActiveMQ broker for the tests: Debian's activemq jars, a STOMP connector on a free port.

The package's own service is not used: each test session starts a private broker (KahaDB in a
temporary directory, no JMX, no web console) and ends it by its pid.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.support.processes import ServiceProcess, free_port

HOME = Path("/usr/share/activemq")
JAR = HOME / "bin" / "activemq.jar"

CONFIG = """<beans xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans
    http://www.springframework.org/schema/beans/spring-beans-2.0.xsd
    http://activemq.apache.org/schema/core
    http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="http://activemq.apache.org/schema/core" useJmx="false"
          brokerName="jobwire-test" dataDirectory="{data}" schedulerSupport="false">
    <persistenceAdapter><kahaDB directory="{data}/kahadb"/></persistenceAdapter>
    <transportConnectors>
      <transportConnector name="stomp" uri="stomp://127.0.0.1:{port}"/>
    </transportConnectors>
  </broker>
</beans>
"""


def available() -> str | None:
    """Why ActiveMQ cannot run here, or None when it can."""
    if not JAR.is_file():
        return f"no ActiveMQ at {JAR} (scripts/services installs Debian's activemq package)"
    if shutil.which("java") is None:
        return "no java on PATH"
    return None


class ActiveMQBroker(ServiceProcess):
    """One private ActiveMQ with a STOMP connector; its data lives in ``base``."""

    def __init__(self, base: Path, port: int | None = None) -> None:
        super().__init__("activemq", port or free_port(), base / "activemq.log")
        self.base = base
        (base / "data").mkdir(parents=True, exist_ok=True)
        (base / "activemq.xml").write_text(CONFIG.format(data=base / "data", port=self.port))

    def argv(self) -> list[str]:
        """java -jar activemq.jar start xbean:file:..., with a small heap."""
        return [
            *("java", "-Xms128M", "-Xmx256M"),
            f"-Dactivemq.home={HOME}",
            f"-Dactivemq.base={self.base}",
            f"-Dactivemq.conf={self.base}",
            f"-Dactivemq.data={self.base / 'data'}",
            *("-jar", str(JAR), "start", f"xbean:file:{self.base / 'activemq.xml'}"),
        ]
