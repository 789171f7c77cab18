Feature: Audit log
  Every change asked of the API is recorded: who asked, with which role, on
  which route and target, the status of the answer, when and from where.
  Read-write identities read the log at GET /api/v0/audit, filtered by time
  (since, until) and target; read-only identities may not read it.

  Scenario: A change is recorded with who made it and the result
    When I PUT /api/v0/network/$net
    Then the response status is 201
    When I GET /api/v0/audit?target=network/$net
    Then the response status is 200
    And the response list has 1 entry
    And the response list has an entry with:
      """
      {"identity": "admin", "role": "read-write", "method": "PUT", "route": "network",
       "target": "network/$net", "status": 201, "client": "127.0.0.1"}
      """
    And the response does not mention "password"

  Scenario: A refused change is recorded too, naming the cluster
    Given I am "viewer"
    When I DELETE /api/v0/cluster/$cluster
    Then the response status is 403
    Given I am "admin"
    When I GET /api/v0/audit?target=cluster/$cluster
    Then the response list has an entry with:
      """
      {"identity": "viewer", "role": "read-only", "method": "DELETE", "route": "cluster",
       "target": "cluster/$cluster", "status": 403, "cluster": "$cluster"}
      """

  Scenario: The target filter takes what is under a cluster
    Given I have created /api/v0/cluster/$cluster
    When I PUT /api/v0/cluster/$cluster/hosts with:
      """
      {"old": [], "new": []}
      """
    And I DELETE /api/v0/cluster/$cluster
    And I GET /api/v0/audit?target=cluster/$cluster
    Then the response list has 3 entries
    And the response list has an entry with:
      """
      {"route": "cluster_hosts", "target": "cluster/$cluster/hosts", "cluster": "$cluster"}
      """
    And the response list has an entry with:
      """
      {"method": "DELETE", "route": "cluster", "status": 200}
      """

  Scenario: Reads are not recorded
    When I GET /api/v0/cluster/$cluster
    Then the response status is 404
    When I GET /api/v0/audit?target=cluster/$cluster
    Then the response list has 0 entries

  Scenario: The log is filtered by time
    When I PUT /api/v0/network/$net
    And I GET /api/v0/audit?target=network/$net&until=2000-01-01T00:00:00Z
    Then the response list has 0 entries
    When I GET /api/v0/audit?target=network/$net&since=2000-01-01T00%3A00%3A00Z&until=2999-01-01T00:00:00.000000
    Then the response list has 1 entry

  Scenario: A read-only identity cannot read the log
    Given I am "viewer"
    When I GET /api/v0/audit
    Then the response status is 403

  Scenario: A bad filter is refused, naming it
    When I GET /api/v0/audit?since=yesterday
    Then the response status is 400
    And the error message mentions "since"
    When I GET /api/v0/audit?colour=red
    Then the response status is 400
    And the error message mentions "colour"
