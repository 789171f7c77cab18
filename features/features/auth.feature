Feature: Authentication and authorisation
  Every route needs credentials. "admin" may read and change everything;
  "viewer" is read-only and never sees host credentials. Nothing is revealed to
  a client that has not authenticated, not even which routes exist.

  Scenario: A request without credentials is challenged
    Given I send no credentials
    When I GET /api/v0/networks
    Then the response status is 401
    And the response header "WWW-Authenticate" starts with "Basic"

  Scenario: A wrong password is refused
    Given I am "admin" with the password "not-the-password"
    When I GET /api/v0/networks
    Then the response status is 401
    And the response header "WWW-Authenticate" starts with "Basic"

  Scenario: An unknown user is refused
    Given I am "nobody" with the password "whatever"
    When I GET /api/v0/clusters
    Then the response status is 401

  Scenario: A read-only user can read
    Given I have created /api/v0/cluster/$cluster
    And I am "viewer"
    When I GET /api/v0/networks
    Then the response status is 200
    And the response list contains "default"
    When I GET /api/v0/cluster/$cluster
    Then the response status is 200
    When I GET /api/v0/clusters
    Then the response list contains "$cluster"

  Scenario: A read-only user cannot change anything
    Given I have created /api/v0/network/$net
    And I am "viewer"
    When I PUT /api/v0/network/$other
    Then the response status is 403
    When I DELETE /api/v0/network/$net
    Then the response status is 403
    When I PUT /api/v0/host/$host with:
      """
      {"ssh_priv_key": "c3NoLWtleS1vbmU="}
      """
    Then the response status is 403
    And GET /api/v0/network/$net answers 200
    And GET /api/v0/network/$other answers 404
    And GET /api/v0/host/$host answers 404

  Scenario: A read-only user cannot read host credentials
    Given I have created /api/v0/host/$host with:
      """
      {"ssh_priv_key": "c3NoLWtleS1vbmU="}
      """
    And I am "viewer"
    When I GET /api/v0/host/$host
    Then the response status is 200
    When I GET /api/v0/host/$host/creds
    Then the response status is 403
    And the response does not mention "c3NoLWtleS1vbmU="

  Scenario: An unknown route is 404 only once authenticated
    When I GET /api/v0/nothing-here
    Then the response status is 404
    When I GET /api/v1/hosts
    Then the response status is 404
    Given I send no credentials
    When I GET /api/v0/nothing-here
    Then the response status is 401
    When I GET /api/v0/hosts
    Then the response status is 401

  Scenario Outline: A known route with the wrong verb is 405 with the allowed ones
    When I <method> <path>
    Then the response status is 405
    And the response header "Allow" is "<allow>"

    Examples:
      | method | path                             | allow            |
      | POST   | /api/v0/hosts                    | GET              |
      | DELETE | /api/v0/clusters                 | GET              |
      | GET    | /api/v0/host                     | PUT              |
      | POST   | /api/v0/network/$net             | GET, PUT, DELETE |
      | DELETE | /api/v0/cluster/$cluster/hosts   | GET, PUT         |
      | DELETE | /api/v0/cluster/$cluster/restart | GET, PUT         |
      | PUT    | /api/v0/host/$host/creds         | GET              |
